"""gpu: the notebook image plus a CUDA build of PyTorch. Run by `hubstack ci build` (see
hubstack/ci/imagetest.py). No GPU here: these check the image, not the card (tests/gpu/
checks a real one)."""

import re
from pathlib import Path

LOCK = Path(__file__).with_name("requirements.txt")
FREEZE = "/usr/share/hubstack/lock/gpu/pip-freeze.txt"


def pins(text: str) -> dict[str, str]:
    """name -> version of every `name==version` line (names normalized as pip does)."""
    found = {}
    for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", text, re.MULTILINE):
        found[re.sub(r"[-_.]+", "-", m.group(1)).lower()] = m.group(2)
    return found


def test_torch_imports_and_is_a_cuda_build(run):
    code = (
        "import torch\n"
        "assert torch.version.cuda, 'not a CUDA build'\n"
        "print('ok', torch.__version__, torch.version.cuda)"
    )
    out = run("python", "-c", code, timeout=300).check()
    assert out.startswith("ok ")


def test_image_holds_exactly_the_locked_versions(run):
    locked = pins(LOCK.read_text())
    assert "torch" in locked and any(n.startswith("nvidia-") for n in locked)
    installed = pins(run("cat", FREEZE).check())
    wrong = {n: (v, installed.get(n)) for n, v in locked.items() if installed.get(n) != v}
    assert not wrong, f"locked version, installed version: {wrong}"


def test_runs_as_non_root(run):
    assert run("id", "-u").check().strip() != "0"
