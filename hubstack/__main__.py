import sys

from hubstack.cli import main

sys.exit(main())
