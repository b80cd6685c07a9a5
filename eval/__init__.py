"""Metrics on videos on disk: FID, FVD, SyncNet Sync-C/D, ArcFace CSIM, SynthSync, drift, paper tables.

Independent of the training code (of lit_avatar only errors, data.media and data.atomic are imported), so
a results file can be recomputed for any video folder. Modules: frechet (the distance), fid, fvd, syncnet,
csim, faces, synthsync (also the validation loops' SynthSync), appearance, stream_scores, drift, stats,
scorers + evaluate (`lit-avatar eval`), tables (`lit-avatar table`), generate_set (a folder of videos via
`lit-avatar generate`).
"""
