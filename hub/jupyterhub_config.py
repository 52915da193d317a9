# JupyterHub config of the hubstack hub: load the platform config, wire hubstack's classes.
# Everything else lives in hubstack.hub.setup so it is tested and versioned with the package.
from hubstack.config import load_config
from hubstack.hub.setup import configure_hub

configure_hub(c, load_config())
