"""Per-modality adapters over the multidiff core (image, audio, voxel).

Each sub-package registers itself under the entry-point group ``multidiff.modalities``;
the core never imports this package.
"""
