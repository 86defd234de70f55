"""Export of trained encoders as TF Serving SavedModels."""

from tf_xmr.export.saved_model import (
    INPUT_NAME,
    OUTPUT_NAME,
    SIGNATURE,
    ExportedEncoder,
    encoder_dir,
    export_encoder,
    export_run_encoders,
    load_exported,
    normalizes,
    read_metadata,
    versions,
)

__all__ = [
    "INPUT_NAME",
    "OUTPUT_NAME",
    "SIGNATURE",
    "ExportedEncoder",
    "encoder_dir",
    "export_encoder",
    "export_run_encoders",
    "load_exported",
    "normalizes",
    "read_metadata",
    "versions",
]
