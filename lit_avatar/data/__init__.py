"""Data: media I/O (media), the shard sample schema (schema), clip sampling (clips), the webdataset
pipeline (stream, shards) and AvatarDataModule (datamodule). Nothing is imported here, so importing a
submodule never pulls in Lightning, PyAV or webdataset by accident."""
