"""TensorProto ⇄ numpy, as TF Serving fills and reads request and response tensors.

gRPC tensors carry their values in the typed fields (`float_val`, `int64_val`, `string_val`...),
as TF Serving's Predict fills them (`Tensor::AsProtoField`); `tensor_content` is read too. A
request tensor is checked before anything is allocated for it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import grpc
import numpy as np
import tensorflow as tf
from tensorflow.core.framework import tensor_pb2, tensor_shape_pb2, types_pb2

from catdog.serving.status import ServingError, invalid

TensorProto = tensor_pb2.TensorProto
MAX_RANK = 32  # numpy's and this server's limit on the dimensions of a request tensor


def dtype_name(dtype: int) -> str:
    """TensorFlow's DataTypeString: DT_FLOAT → "float", DT_STRING → "string"."""
    return types_pb2.DataType.Name(dtype)[3:].lower() if dtype in types_pb2.DataType.values() \
        else f"unknown dtype {dtype}"


_TYPED_FIELD = {
    types_pb2.DT_FLOAT: "float_val", types_pb2.DT_DOUBLE: "double_val",
    types_pb2.DT_INT32: "int_val", types_pb2.DT_INT16: "int_val", types_pb2.DT_INT8: "int_val",
    types_pb2.DT_UINT8: "int_val", types_pb2.DT_UINT16: "int_val",
    types_pb2.DT_INT64: "int64_val", types_pb2.DT_UINT32: "uint32_val",
    types_pb2.DT_UINT64: "uint64_val", types_pb2.DT_BOOL: "bool_val",
    types_pb2.DT_STRING: "string_val", types_pb2.DT_HALF: "half_val",
    types_pb2.DT_BFLOAT16: "half_val", types_pb2.DT_COMPLEX64: "scomplex_val",
    types_pb2.DT_COMPLEX128: "dcomplex_val",
}


def _numpy_dtype(dtype: int) -> np.dtype:
    return np.dtype(tf.dtypes.as_dtype(dtype).as_numpy_dtype)


def _proto_dtype(array: np.ndarray) -> int:
    if array.dtype == object or array.dtype.kind in "SU":
        return types_pb2.DT_STRING
    return tf.dtypes.as_dtype(array.dtype).as_datatype_enum


def _shape_proto(shape: Sequence[int]) -> tensor_shape_pb2.TensorShapeProto:
    return tensor_shape_pb2.TensorShapeProto(
        dim=[tensor_shape_pb2.TensorShapeProto.Dim(size=n) for n in shape])


def tensor_proto(value: Any) -> TensorProto:
    """A TensorProto with its values in the typed field, as TF Serving's responses carry them."""
    array = np.asarray(value)
    dtype = _proto_dtype(array)
    proto = TensorProto(dtype=dtype, tensor_shape=_shape_proto(array.shape))
    flat = array.reshape(-1)
    if dtype == types_pb2.DT_STRING:
        proto.string_val.extend(v if isinstance(v, bytes) else str(v).encode() for v in flat)
    elif dtype in (types_pb2.DT_HALF, types_pb2.DT_BFLOAT16):
        proto.half_val.extend(flat.view(np.uint16).tolist())
    elif dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128):
        getattr(proto, _TYPED_FIELD[dtype]).extend(flat.view(flat.real.dtype).tolist())
    else:
        getattr(proto, _TYPED_FIELD[dtype]).extend(flat.tolist())
    return proto


def array_from_proto(proto: TensorProto, max_bytes: int = 1 << 31) -> np.ndarray:
    """The array a TensorProto describes, checked before anything is allocated: a usable dtype,
    a known non-negative shape, no more values than the shape holds, at most `max_bytes`."""
    if proto.dtype not in _TYPED_FIELD:
        raise invalid(f"tensor parsing error: dtype {dtype_name(proto.dtype)} cannot be sent "
                      "in a request")
    if proto.tensor_shape.unknown_rank or any(d.size < 0 for d in proto.tensor_shape.dim):
        raise invalid("tensor parsing error: a request tensor needs a fully known shape")
    if len(proto.tensor_shape.dim) > MAX_RANK:
        raise invalid(f"tensor parsing error: rank {len(proto.tensor_shape.dim)} is more than "
                      f"{MAX_RANK}")
    shape = tuple(d.size for d in proto.tensor_shape.dim)
    count = math.prod(shape)
    itemsize = 8 if proto.dtype == types_pb2.DT_STRING else _numpy_dtype(proto.dtype).itemsize
    if count * itemsize > max_bytes:
        raise ServingError(grpc.StatusCode.RESOURCE_EXHAUSTED,
                           f"tensor of shape {list(shape)} ({dtype_name(proto.dtype)}) would "
                           f"take {count * itemsize} bytes; the limit is {max_bytes}")
    if proto.tensor_content:
        if len(proto.tensor_content) != count * itemsize:
            raise invalid(f"tensor parsing error: tensor_content holds "
                          f"{len(proto.tensor_content)} bytes; shape {list(shape)} of "
                          f"{dtype_name(proto.dtype)} needs {count * itemsize}")
        return np.frombuffer(proto.tensor_content, _numpy_dtype(proto.dtype)).reshape(shape)
    values = getattr(proto, _TYPED_FIELD[proto.dtype])
    per_item = 2 if proto.dtype in (types_pb2.DT_COMPLEX64, types_pb2.DT_COMPLEX128) else 1
    if len(values) > count * per_item:
        raise invalid(f"tensor parsing error: {len(values)} values for shape {list(shape)}")
    if proto.dtype == types_pb2.DT_STRING:
        flat = np.empty(count, dtype=object)
        flat[:len(values)] = list(values)
        flat[len(values):] = values[-1] if values else b""
        return flat.reshape(shape)
    return tf.make_ndarray(proto)  # pads with the last value (or zeros), as TensorFlow does


def typed_proto(dtype: int, shape: Sequence[int], values: list) -> TensorProto:
    """A TensorProto of `dtype` and `shape` holding `values` in its typed field (REST requests
    become these; DT_FLOAT values are rounded to float32 as TF Serving stores them)."""
    proto = TensorProto(dtype=dtype, tensor_shape=_shape_proto(shape))
    field = getattr(proto, _TYPED_FIELD[dtype])
    if dtype == types_pb2.DT_FLOAT:
        values = np.asarray(values, np.float64).astype(np.float32).tolist()
    field.extend(values)
    return proto
