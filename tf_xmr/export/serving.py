"""The TF Serving contract of the exported models, checked without a model server (design.md section 5).

No ``tensorflow_model_server`` installs on these machines (toolchain.md section 5), so this module emulates the two
things a server does with our SavedModels, using the real ``tensorflow-serving-api`` protos:

- ``predict``: the gRPC ``PredictionService.Predict`` call (a ``PredictRequest`` in, a ``PredictResponse`` out);
- ``rest_predict``: the REST ``:predict`` call, JSON in and out, in the row (``instances``) and columnar (``inputs``)
  forms, converted to a ``PredictRequest`` and back as the server does.

It also writes what the server reads from disk: ``assets.extra/tf_serving_warmup_requests`` in each version folder
(replayed at model load) and one ``models.config`` for the run, naming every exported model.

This is host-side code for tests and export; nothing here adds an op to any graph.
"""

from __future__ import annotations

import base64
import json
import os
import re
from collections.abc import Mapping

import numpy as np
import tensorflow as tf
from google.protobuf import text_format
from tensorflow.core.protobuf import saved_model_pb2
from tensorflow_serving.apis import predict_pb2, prediction_log_pb2
from tensorflow_serving.config import model_server_config_pb2

from tf_xmr.errors import ModelInputError
from tf_xmr.files import atomic_write_text

WARMUP_FILE = "tf_serving_warmup_requests"  # in <version_dir>/assets.extra/
MODELS_CONFIG = "models.config"  # in <run_dir>/export/
DEFAULT_SIGNATURE = "serving_default"  # what TF Serving uses when a request names no signature

# tf.errors code numbers -> the gRPC status names a server answers with ("INVALID_ARGUMENT", ...).
_CODE_NAMES = {getattr(tf.errors, name): name for name in dir(tf.errors) if name.isupper()}


class ServingError(Exception):
    """A request the server would refuse: ``code`` is the gRPC status name, ``message`` one line naming the problem."""

    def __init__(self, code: str, message: str):
        self.code = code
        self.message = " ".join(str(message).split())
        super().__init__(f"{self.code}: {self.message}")


def _invalid(message: str) -> ServingError:
    return ServingError("INVALID_ARGUMENT", message)


# ---------------------------------------------------------------------------------------------------------------
# gRPC Predict
# ---------------------------------------------------------------------------------------------------------------


def _resolve(signature, name: str):
    """(signature name, ConcreteFunction) for a request naming ``name`` ("" means the default signature).

    ``signature`` is one ConcreteFunction (the caller already chose it, so the request's name is not checked) or a
    mapping of them, e.g. ``tf.saved_model.load(path).signatures``, where the name picks one as the server does.
    """
    name = name or DEFAULT_SIGNATURE
    if isinstance(signature, Mapping):
        if name not in signature:
            raise _invalid(f'Serving signature name: "{name}" not found in signature def '
                           f"(available: {', '.join(sorted(signature))})")
        return name, signature[name]
    return name, signature


def _input_specs(fn) -> dict[str, tf.TensorSpec]:
    # A loaded signature takes keyword arguments only: structured_input_signature is ((), {name: TensorSpec}).
    return dict(fn.structured_input_signature[1])


def _check_inputs(given: dict[str, tuple[tf.DType, tuple]], specs: dict[str, tf.TensorSpec], what: str) -> None:
    """Names, dtypes and shapes of ``given`` ({name: (dtype, shape)}) against the signature's input specs."""
    extra, missing = sorted(set(given) - set(specs)), sorted(set(specs) - set(given))
    if extra or missing:
        # TF Serving's wording: "input size does not match signature ... Sent extra: ... Missing but required: ...".
        raise _invalid(f"{what}: inputs do not match the signature (expects {sorted(specs)}; "
                       f"sent extra: {extra}; missing but required: {missing})")
    for name in sorted(specs):
        spec = specs[name]
        dtype, shape = given[name]
        if dtype != spec.dtype:
            raise _invalid(f"{what}: input '{name}' expects {spec.dtype.name} but {dtype.name} is provided")
        if not spec.shape.is_compatible_with(shape):
            raise _invalid(f"{what}: input '{name}' has shape {list(shape)}, the signature expects "
                           f"{[-1 if d is None else d for d in spec.shape.as_list()]} (-1: any size)")


def op_error_message(exc: tf.errors.OpError) -> str:
    """The lines of a graph error that say what failed (an assert's or check_numerics' message), no stack noise."""
    noise = ("Graph execution error", "Detected at node", "<stack traces unavailable>", "[[{{node")
    lines = [line.strip() for line in str(exc.message).splitlines()]
    kept = [line for line in lines if line and not line.startswith(noise)]
    return "; ".join(kept) or type(exc).__name__


def predict(signature, request: predict_pb2.PredictRequest) -> predict_pb2.PredictResponse:
    """Answer a gRPC ``PredictRequest`` as TF Serving's ``Predict`` would, in process.

    Args:
        signature: a loaded signature (``tf.saved_model.load(path).signatures[name]``) or the whole mapping of them.
        request: the request; ``inputs`` are TensorProtos keyed by the signature's input names.

    Returns:
        ``PredictResponse`` with every output (or those in ``request.output_filter``) as a TensorProto and the
        request's ``model_spec`` copied, with the signature name filled in.

    Raises:
        ServingError: unknown signature, unknown/missing inputs, wrong dtype or shape (INVALID_ARGUMENT), or the
            graph refusing the input (its own code, e.g. an assert or check_numerics: INVALID_ARGUMENT).
    """
    name, fn = _resolve(signature, request.model_spec.signature_name)
    specs = _input_specs(fn)
    what = f"model '{request.model_spec.name}' signature '{name}'" if request.model_spec.name else f"signature '{name}'"
    given = {}
    for key, proto in request.inputs.items():
        try:
            given[key] = (tf.as_dtype(proto.dtype), tuple(d.size for d in proto.tensor_shape.dim))
        except TypeError:
            raise _invalid(f"{what}: input '{key}' has an unknown dtype enum {proto.dtype}") from None
    _check_inputs(given, specs, what)
    feeds = {}
    for key, proto in request.inputs.items():
        try:
            feeds[key] = tf.constant(tf.make_ndarray(proto), dtype=specs[key].dtype)
        except (TypeError, ValueError) as exc:  # e.g. fewer values than the shape says
            raise _invalid(f"{what}: input '{key}' is not a valid TensorProto ({exc})") from None
    try:
        outputs = fn(**feeds)
    except tf.errors.OpError as exc:
        raise ServingError(_CODE_NAMES.get(exc.error_code, "UNKNOWN"), f"{what}: {op_error_message(exc)}") from None
    wanted = list(request.output_filter) or sorted(outputs)
    unknown = sorted(set(wanted) - set(outputs))
    if unknown:
        raise _invalid(f"{what}: output tensor alias not found in signature: {unknown} (has {sorted(outputs)})")
    response = predict_pb2.PredictResponse()
    response.model_spec.CopyFrom(request.model_spec)
    response.model_spec.signature_name = name
    for key in wanted:
        response.outputs[key].CopyFrom(tf.make_tensor_proto(outputs[key].numpy()))
    return response


# ---------------------------------------------------------------------------------------------------------------
# REST predict (JSON)
#
# The rules followed are those of TF Serving's "RESTful API" page (tensorflow/serving, tensorflow_serving/g3doc/
# api_rest.md, "Predict API", "JSON mapping", "Encoding binary values", "JSON conformance"), and where the page is
# silent, its JSON converter (tensorflow_serving/util/json_tensor.cc):
# - the body is a JSON object; "signature_name" is optional (default signature) and must be a string;
# - inputs come in "instances" (row format) or "inputs" (columnar format), never both, and one of them is required;
# - row format: with a single named input each instance is that input's value (one row); with several named inputs
#   each instance is an object {input name: value}; every instance has the same shape and they are batched along a
#   new 0-th dimension; an empty "instances" list is refused;
# - columnar format: "inputs" is the single input's value, or an object {input name: value} (any 0-th dimension);
# - answer: row format -> {"predictions": [...]}, one entry per batch row: the row's value for a single output, an
#   object {output name: value} for several (all outputs must then share the 0-th dimension); columnar format ->
#   {"outputs": value} for a single output, {"outputs": {output name: value}} for several;
# - JSON types: DT_FLOAT/DT_DOUBLE are numbers, NaN, Infinity or -Infinity (accepted on input, written on output);
#   integers are whole numbers; DT_BOOL true/false; DT_STRING is a JSON string, or {"b64": ...} for binary input;
#   string outputs whose name ends in "_bytes" are written as {"b64": ...}, others as plain strings;
# - on error the answer is {"error": "<message>"} and nothing else.
# ---------------------------------------------------------------------------------------------------------------


def _dense_shape(value) -> list[int]:
    # As the server does: the shape is read along the first element at each level; _json_values checks the rest.
    shape = []
    while isinstance(value, list):
        shape.append(len(value))
        if not value:
            break
        value = value[0]
    return shape


def _json_leaf(value, dtype: tf.DType, where: str):
    def wrong():
        return _invalid(f"{where}: JSON value {json.dumps(value)[:60]} is not of expected type {dtype.name}")

    if dtype == tf.string:
        if isinstance(value, str):
            return value.encode("utf-8")
        if isinstance(value, dict) and list(value) == ["b64"] and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise _invalid(f"{where}: unable to base64 decode {value['b64'][:60]!r}") from None
        raise wrong()
    if dtype == tf.bool:
        if not isinstance(value, bool):
            raise wrong()
        return value
    # bool is an int in Python but not a JSON number.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise wrong()
    if dtype.is_floating:
        info = np.finfo(dtype.as_numpy_dtype)
        if isinstance(value, int):
            lossless = abs(value) <= 2 ** (info.nmant + 1) - 1
        else:
            lossless = not np.isfinite(value) or abs(value) <= float(info.max)
        if not lossless:
            raise _invalid(f"{where}: cannot convert JSON value {value} to {dtype.name} without loss of precision")
        return value
    if dtype.is_integer:
        info = np.iinfo(dtype.as_numpy_dtype)
        if not isinstance(value, int) or not info.min <= value <= info.max:
            raise wrong()
        return value
    raise ServingError("UNIMPLEMENTED", f"{where}: conversion of JSON values to {dtype.name} is not supported")


def _json_to_array(value, dtype: tf.DType, where: str) -> np.ndarray:
    """A JSON value (scalar or nested lists) as a dense array of ``dtype``, refusing ragged lists and wrong types."""
    shape = _dense_shape(value)
    leaves = []

    def walk(item, level):
        if not isinstance(item, list):
            if level != len(shape):
                raise _invalid(f"{where}: JSON value {json.dumps(item)[:60]} found at nesting level {level}, "
                               f"expected at level {len(shape)} (ragged lists?)")
            leaves.append(_json_leaf(item, dtype, where))
            return
        if level >= len(shape) or len(item) != shape[level]:
            raise _invalid(f"{where}: list of {len(item)} items at nesting level {level} where the first row set "
                           f"the shape {shape} (ragged lists?)")
        for sub in item:
            walk(sub, level + 1)

    walk(value, 0)
    np_dtype = object if dtype == tf.string else dtype.as_numpy_dtype
    return np.array(leaves, dtype=np_dtype).reshape(shape)


def _is_named_object(value) -> bool:
    # {"b64": "..."} is a value, not an object of named inputs.
    return isinstance(value, dict) and not (list(value) == ["b64"] and isinstance(value.get("b64"), str))


def _rows_to_arrays(instances, specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    if not isinstance(instances, list):
        raise _invalid("expecting 'instances' to be a list")
    if not instances:
        raise _invalid("no values in 'instances' list (an empty batch)")
    named = _is_named_object(instances[0])
    if not named and len(specs) > 1:
        raise _invalid(f"'instances' is a plain list, but the signature has several inputs {sorted(specs)}: "
                       "each instance must be an object {input name: value}")
    rows: dict[str, list[np.ndarray]] = {name: [] for name in specs}
    for i, instance in enumerate(instances):
        if _is_named_object(instance) != named:
            raise _invalid(f"'instances' item {i} is {'a value' if named else 'an object'} where item 0 is "
                           f"{'an object' if named else 'a value'}")
        items = instance if named else {next(iter(specs)): instance}
        if set(items) != set(specs):
            raise _invalid(f"'instances' item {i} has keys {sorted(items)}, expected the signature's inputs "
                           f"{sorted(specs)}")
        for name, value in items.items():
            array = _json_to_array(value, specs[name].dtype, f"'instances' item {i} input '{name}'")
            if rows[name] and array.shape != rows[name][0].shape:
                raise _invalid(f"'instances' item {i} input '{name}' has shape {list(array.shape)}, "
                               f"item 0 has {list(rows[name][0].shape)}")
            rows[name].append(array)
    return {name: np.stack(arrays) for name, arrays in rows.items()}


def _columns_to_arrays(inputs, specs: dict[str, tf.TensorSpec]) -> dict[str, np.ndarray]:
    if not _is_named_object(inputs):
        if len(specs) > 1:
            raise _invalid(f"'inputs' is a plain value/list, but the signature has several inputs {sorted(specs)}: "
                           "'inputs' must be an object {input name: value}")
        (name,) = specs
        return {name: _json_to_array(inputs, specs[name].dtype, f"'inputs' input '{name}'")}
    missing, extra = sorted(set(specs) - set(inputs)), sorted(set(inputs) - set(specs))
    if missing or extra:
        # The server ignores extra names; refusing them here is stricter, so whatever passes here passes there.
        raise _invalid(f"'inputs' object has keys {sorted(inputs)}, expected the signature's inputs "
                       f"{sorted(specs)} (missing: {missing}; unknown: {extra})")
    return {name: _json_to_array(inputs[name], spec.dtype, f"'inputs' input '{name}'") for name, spec in specs.items()}


def _json_value(array: np.ndarray, name: str):
    """An output array as JSON-ready nested lists (floats may be NaN/Infinity, as the REST API writes them)."""
    if array.dtype != object:
        return array.tolist()  # exact float32 values as Python floats; ints and bools as they are

    def text(value: bytes):
        if name.endswith("_bytes"):
            return {"b64": base64.b64encode(value).decode("ascii")}
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            raise ServingError("INTERNAL", f"output '{name}' holds bytes that are not UTF-8 text; name the output "
                                           "with a '_bytes' suffix to have them written as base64") from None

    def walk(value):
        return [walk(v) for v in value] if isinstance(value, list) else text(value)

    return walk(array.tolist())


def _answer(outputs: dict[str, np.ndarray], row_format: bool) -> dict:
    names = sorted(outputs)
    values = {name: _json_value(outputs[name], name) for name in names}
    if not row_format:
        return {"outputs": values[names[0]] if len(names) == 1 else values}
    sizes = {}
    for name in names:
        if outputs[name].ndim == 0:
            raise _invalid(f"output '{name}' is a scalar; the row format needs a batch dimension")
        sizes[name] = outputs[name].shape[0]
    if len(set(sizes.values())) > 1:
        raise _invalid(f"outputs have inconsistent batch sizes {sizes}; use the columnar format ('inputs')")
    if len(names) == 1:
        return {"predictions": values[names[0]]}
    rows = next(iter(sizes.values()))
    return {"predictions": [{name: values[name][i] for name in names} for i in range(rows)]}


def _rest_predict(signature, body) -> dict:
    if isinstance(body, (bytes, bytearray)):
        try:
            body = body.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise _invalid(f"JSON Parse error: the body is not UTF-8 ({exc.reason} at offset {exc.start})") from None
    if isinstance(body, str):
        if not body.strip():
            raise _invalid("JSON Parse error: the document is empty")
        try:
            # Python's parser accepts NaN, Infinity and -Infinity, as the REST API does ("JSON conformance").
            body = json.loads(body)
        except json.JSONDecodeError as exc:
            raise _invalid(f"JSON Parse error: {exc.msg} at offset {exc.pos}") from None
    if not isinstance(body, dict):
        raise _invalid(f"the request body must be a JSON object, got {type(body).__name__}")
    signature_name = body.get("signature_name", "")
    if not isinstance(signature_name, str):
        raise _invalid("'signature_name' must be a string")
    name, fn = _resolve(signature, signature_name)
    specs = _input_specs(fn)
    if "instances" in body and "inputs" in body:
        raise _invalid("expecting only one of 'inputs' or 'instances' keys, got both")
    if "instances" in body:
        row_format, arrays = True, _rows_to_arrays(body["instances"], specs)
    elif "inputs" in body:
        row_format, arrays = False, _columns_to_arrays(body["inputs"], specs)
    else:
        raise _invalid("missing 'inputs' or 'instances' key")
    # Through the gRPC request, as the server does: the JSON becomes a PredictRequest, the response becomes JSON.
    request = predict_pb2.PredictRequest()
    request.model_spec.signature_name = name
    for key, array in arrays.items():
        request.inputs[key].CopyFrom(tf.make_tensor_proto(array, dtype=specs[key].dtype))
    response = predict(fn, request)
    return _answer({key: tf.make_ndarray(proto) for key, proto in response.outputs.items()}, row_format)


def rest_predict(signature, body: str | bytes | dict) -> dict:
    """Answer a REST ``:predict`` body as TF Serving would (rules in the comment block above).

    Args:
        signature: a loaded signature, or the mapping of them (``signature_name`` in the body then picks one).
        body: the JSON request, as text, bytes or an already parsed dict.

    Returns:
        ``{"predictions": ...}`` (row format), ``{"outputs": ...}`` (columnar format), or ``{"error": message}``
        when the request is refused (never a partial answer).
    """
    try:
        return _rest_predict(signature, body)
    except ServingError as exc:
        return {"error": exc.message}


# ---------------------------------------------------------------------------------------------------------------
# Warmup requests (assets.extra/tf_serving_warmup_requests)
# ---------------------------------------------------------------------------------------------------------------


def warmup_requests(model_name: str, inputs: dict[str, np.ndarray],
                    signature_name: str = DEFAULT_SIGNATURE) -> list[prediction_log_pb2.PredictionLog]:
    """One ``PredictionLog`` holding a ``PredictRequest`` for ``inputs`` ({input name: batch array}).

    The arrays keep their dtype: they must match the signature's (float32 features), or the server fails to load
    the version when it replays the request.
    """
    if not inputs:
        raise ModelInputError(f"warmup request for model '{model_name}' has no inputs")
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model_name
    request.model_spec.signature_name = signature_name
    for name, value in inputs.items():
        array = np.asarray(value)
        if array.ndim == 0 or array.shape[0] == 0:
            # A warmup batch warms nothing when empty, and a graph that refuses empty batches would fail the load.
            raise ModelInputError(f"warmup input '{name}' of model '{model_name}' needs at least one row, "
                                  f"got shape {array.shape}")
        request.inputs[name].CopyFrom(tf.make_tensor_proto(array))
    log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
    return [log]


def _saved_model_input_specs(version_dir: str, signature_name: str) -> dict[str, tf.TensorSpec] | None:
    """The signature's input specs read from ``saved_model.pb`` (no graph loaded); None if the file is absent."""
    path = os.path.join(version_dir, "saved_model.pb")
    if not os.path.exists(path):
        return None
    with open(path, "rb") as handle:
        saved_model = saved_model_pb2.SavedModel.FromString(handle.read())
    for meta_graph in saved_model.meta_graphs:
        if "serve" in meta_graph.meta_info_def.tags:
            if signature_name not in meta_graph.signature_def:
                raise ModelInputError(f"{path} has no signature '{signature_name}' "
                                      f"(has {sorted(meta_graph.signature_def)})")
            infos = meta_graph.signature_def[signature_name].inputs
            return {name: tf.TensorSpec(tf.TensorShape(info.tensor_shape), tf.as_dtype(info.dtype))
                    for name, info in infos.items()}
    raise ModelInputError(f"{path} has no meta graph tagged 'serve'")


def write_warmup_requests(version_dir: str, model_name: str, inputs: dict[str, np.ndarray],
                          signature_name: str = DEFAULT_SIGNATURE) -> str:
    """Write ``<version_dir>/assets.extra/tf_serving_warmup_requests``, the TFRecord TF Serving replays at load.

    ``version_dir`` may be a temporary folder (nothing here depends on its name). If it already holds
    ``saved_model.pb``, the inputs are checked against the signature first, so a bad warmup file (which would stop
    the server from loading the version) is never written.

    Returns:
        Path of the written file.
    """
    return write_warmup_file(version_dir, model_name, [(signature_name, inputs)])


def write_warmup_file(version_dir: str, model_name: str, requests: list[tuple[str, dict[str, np.ndarray]]]) -> str:
    """Like :func:`write_warmup_requests`, with one request per ``(signature name, inputs)`` in one file (a model
    with a raw-input signature beside ``serving_default`` warms both)."""
    logs = []
    for signature_name, inputs in requests:
        added = warmup_requests(model_name, inputs, signature_name)
        logs.extend(added)
        specs = _saved_model_input_specs(version_dir, signature_name)
        for log in added if specs is not None else ():
            given = {name: (tf.as_dtype(proto.dtype), tuple(d.size for d in proto.tensor_shape.dim))
                     for name, proto in log.predict_log.request.inputs.items()}
            try:
                _check_inputs(given, specs, f"warmup request of model '{model_name}'")
            except ServingError as exc:
                raise ModelInputError(exc.message) from None
    folder = os.path.join(version_dir, "assets.extra")
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, WARMUP_FILE)
    with tf.io.TFRecordWriter(path) as writer:
        for log in logs:
            writer.write(log.SerializeToString())
    return path


# ---------------------------------------------------------------------------------------------------------------
# models.config (one ModelServerConfig for the run)
# ---------------------------------------------------------------------------------------------------------------


def _is_model_dir(path: str) -> bool:
    """A folder TF Serving can serve: at least one integer version folder holding saved_model.pb."""
    return any(re.fullmatch(r"\d+", name) and os.path.isfile(os.path.join(path, name, "saved_model.pb"))
               for name in os.listdir(path))


def write_models_config(run_dir: str) -> str:
    """Write ``<run_dir>/export/models.config`` naming every exported model of the run (encoders and retrievers).

    Start a server with ``tensorflow_model_server --model_config_file=<that path>``; each model is served under its
    folder name. Models are sorted by name and the file is replaced atomically, so reruns give the same file.

    Returns:
        Path of the written file.
    """
    export_dir = os.path.join(run_dir, "export")
    if not os.path.isdir(export_dir):
        raise ModelInputError(f"no export folder at {export_dir}")
    names = sorted(name for name in os.listdir(export_dir)
                   if not name.startswith(".") and os.path.isdir(os.path.join(export_dir, name))
                   and _is_model_dir(os.path.join(export_dir, name)))
    if not names:
        raise ModelInputError(f"no exported model (a folder with an integer version holding saved_model.pb) "
                              f"under {export_dir}")
    config = model_server_config_pb2.ModelServerConfig()
    for name in names:
        model = config.model_config_list.config.add()
        model.name = name
        model.base_path = os.path.abspath(os.path.join(export_dir, name))
        model.model_platform = "tensorflow"
    path = os.path.join(export_dir, MODELS_CONFIG)
    atomic_write_text(path, text_format.MessageToString(config))
    return path


def read_models_config(path: str) -> model_server_config_pb2.ModelServerConfig:
    """Parse a text-format ``ModelServerConfig`` (the file ``write_models_config`` writes)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return text_format.Parse(handle.read(), model_server_config_pb2.ModelServerConfig())
    except (OSError, UnicodeDecodeError, text_format.ParseError) as exc:
        raise ModelInputError(f"{path} is not a readable TF Serving models.config ({exc})") from None
