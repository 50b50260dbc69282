"""MoE Chat's Qt-free core: model files, devices, placement, inference and storage."""

from importlib import metadata


def package_version(name: str = "moe-chat") -> str:
    """The installed version of a distribution (this app by default), or "unknown"."""
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "unknown"
