"""Config machinery: frozen dataclasses loaded strictly from YAML files with includes and --set overrides."""

from tf_xmr.config.base import (
    INCLUDES_KEY,
    SET_SOURCE,
    FieldSpec,
    SourceMap,
    apply_overrides,
    cfg_field,
    dump_yaml,
    field_spec,
    from_dict,
    load_yaml,
    replace_path,
    to_dict,
)

__all__ = [
    "INCLUDES_KEY",
    "SET_SOURCE",
    "FieldSpec",
    "SourceMap",
    "apply_overrides",
    "cfg_field",
    "dump_yaml",
    "field_spec",
    "from_dict",
    "load_yaml",
    "replace_path",
    "to_dict",
]
