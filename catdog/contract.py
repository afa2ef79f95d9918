"""Names that cross a process boundary, shared by the exporter, the server and the client.

Plain strings only: this module imports nothing, so anything may import it. TF Serving's own
names (method names, the warm-up file, the `_bytes` suffix) are spelled as TF Serving spells them.
"""

# Signature keys of an exported catdog SavedModel.
SERVING_DEFAULT = "serving_default"
PREDICT_PIXELS = "predict_pixels"
CLASSIFY = "classify"

# Input aliases.
IMAGE_BYTES = "image_bytes"  # encoded JPEG/PNG/GIF/BMP strings, shape [] or [N]
PIXELS = "pixels"  # float32 RGB 0–255, [N, S, S, 3]; also the Keras model's input name
CLASSIFY_INPUTS = "inputs"  # serialized tf.Example, TF Serving's classify/regress input alias

# Output aliases.
PROBABILITIES = "probabilities"
CLASS_IDS = "class_ids"
CLASSES = "classes"  # TF Serving's classify output for labels
SCORES = "scores"  # TF Serving's classify output for scores
REGRESS_OUTPUTS = "outputs"  # TF Serving's regress output alias

# The tf.Example feature holding the encoded image for the classify signature.
IMAGE_FEATURE = "image/encoded"

# TF Serving's signature method names.
PREDICT_METHOD = "tensorflow/serving/predict"
CLASSIFY_METHOD = "tensorflow/serving/classify"
REGRESS_METHOD = "tensorflow/serving/regress"

# Files inside a SavedModel version folder.
LABELS_FILE = "labels.txt"  # under assets/
WARMUP_FILE = "assets.extra/tf_serving_warmup_requests"
SOURCE_FILE = "assets.extra/catdog_source.json"  # the run, epoch and data a version came from
# <export_dir>/candidates/<model_name>/: exports not (yet) published, never served.
CANDIDATES_DIR = "candidates"

# REST: a DT_STRING output whose alias ends with this is written as {"b64": ...}.
BYTES_SUFFIX = "_bytes"

# The .h5 file attribute holding the JSON list of class names.
H5_CLASS_NAMES_ATTR = "catdog_class_names"
H5_SOURCE_ATTR = "catdog_source"  # the same JSON record as SOURCE_FILE
# The source record's key saying the export answers each image averaged with its mirror
SOURCE_TEST_TIME_FLIP = "test_time_flip"

# Defaults that the exporter, the server, the client and the deployment files agree on.
DEFAULT_MODEL_NAME = "catdog"
DEFAULT_GRPC_PORT = 8500  # TF Serving's --port
DEFAULT_REST_PORT = 8501  # TF Serving's --rest_api_port
