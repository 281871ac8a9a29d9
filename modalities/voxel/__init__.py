"""Voxels: a 3D UNet on occupancy or SDF grids, folders of meshes, parametric primitives, meshes out.

Registered as the modality ``voxel`` through the entry-point group ``multidiff.modalities``.
"""

from .adapter import VoxelDataConfig, VoxelModality, VoxelModelConfig

__all__ = ["VoxelDataConfig", "VoxelModality", "VoxelModelConfig"]
