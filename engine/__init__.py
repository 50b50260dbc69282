"""MoE Chat's Qt-free core: model files, devices, placement, inference and storage."""
