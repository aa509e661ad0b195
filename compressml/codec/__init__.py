"""Bytes on disk: the .cml container, LAE encode/decode, tiling, and file jobs."""

from compressml.codec.container import Container, ContainerError, parse
from compressml.codec.files import CodecModel, compress_file, decompress_file, describe

__all__ = ["CodecModel", "Container", "ContainerError", "compress_file", "decompress_file", "describe", "parse"]
