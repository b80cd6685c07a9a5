"""Metrics on videos on disk: FID, FVD, SyncNet Sync-C/D, ArcFace CSIM, SynthSync, drift, paper tables.

Independent of the training code (only lit_avatar.errors and lit_avatar.data.media are imported), so a
results file can be recomputed for any video folder. Modules: frechet (the distance), metrics (torchmetrics
wrappers for validation loops), fid, fvd, syncnet, csim, faces, synthsync, drift, scorers + evaluate
(`lit-avatar eval`), tables (`lit-avatar table`), generate_set (a folder of videos via `lit-avatar generate`).
"""
