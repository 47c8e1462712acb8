"""Loads the compiled extension winnow._C, or says exactly how to rebuild it."""
import torch

REBUILD_HINT = (
    "Rebuild winnow against the installed torch: `pip install --no-build-isolation -e .` "
    "in the winnow checkout (or `make build`)."
)


def load():
    try:
        from winnow import _C
    except ImportError as e:  # missing .so, or undefined symbols from another torch build
        raise ImportError(
            f"winnow's compiled extension winnow._C could not be loaded ({e}). "
            f"Installed torch is {torch.__version__}. {REBUILD_HINT}"
        ) from e
    built = _C.build_info()["torch_version"]
    if built != torch.__version__:
        raise ImportError(
            f"winnow._C was built against torch {built} but torch {torch.__version__} is installed. "
            f"{REBUILD_HINT}"
        )
    return _C
