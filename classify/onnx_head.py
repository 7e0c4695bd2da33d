"""A fitted head (scaler -> [PCA] -> estimator) as an ONNX graph: features float32 [N, D] -> probabilities [N, C].

skl2onnx converts the scikit-learn steps; alzmri's own estimators get converters here, built from skl2onnx's
converters of the estimators they wrap, so the graph computes exactly what their ``predict_proba`` does:

- ``SoftmaxSVC``: softmax of the SVC's OvR decision values (binary: of ``[-d, d] / 2``).
- ``Rebalanced``: the wrapped estimator (rebalancing happens in ``fit`` only).

The columns follow ``class_names`` as ``ModelBundle.predict_proba`` does: a classes-seen -> classes matrix (0/1)
puts every seen class in its column and gives classes the model never saw 0.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

from featurize.engines import OPSET

ML_OPSET = 3
FEATURES = "features"
PROBABILITIES = "probabilities"
_OPTIONS = {"zipmap": [True, False, "columns"], "nocl": [True, False]}
_registered = False


def _convert_rebalanced(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
    from skl2onnx.algebra.onnx_ops import OnnxIdentity

    opv, outs = container.target_opset, operator.outputs
    sub = OnnxSubEstimator(operator.raw_operator.estimator_, operator.inputs[0], op_version=opv, options={"zipmap": False})
    OnnxIdentity(sub[0], op_version=opv, output_names=outs[:1]).add_to(scope, container)
    OnnxIdentity(sub[1], op_version=opv, output_names=outs[1:]).add_to(scope, container)


def _convert_softmax_svc(scope: Any, operator: Any, container: Any) -> None:
    from skl2onnx.algebra.onnx_operator import OnnxSubEstimator
    from skl2onnx.algebra.onnx_ops import OnnxIdentity, OnnxMatMul, OnnxSoftmax

    opv, outs, svc = container.target_opset, operator.outputs, operator.raw_operator.svc_
    sub = OnnxSubEstimator(svc, operator.inputs[0], op_version=opv, options={"zipmap": False})
    scores = sub[1]
    if len(svc.classes_) == 2:
        # skl2onnx gives a binary SVC's scores as [d, -d] (d positive for classes_[1]); SoftmaxSVC uses [-d, d] / 2
        swap = np.array([[0.0, 0.5], [0.5, 0.0]], dtype=np.float32)
        scores = OnnxMatMul(scores, swap, op_version=opv)
    OnnxIdentity(sub[0], op_version=opv, output_names=outs[:1]).add_to(scope, container)
    OnnxSoftmax(scores, axis=1, op_version=opv, output_names=outs[1:]).add_to(scope, container)


def register_converters() -> None:
    """Teach skl2onnx alzmri's estimators (once per process)."""
    global _registered
    if _registered:
        return
    from skl2onnx import update_registered_converter
    from skl2onnx.common.shape_calculator import calculate_linear_classifier_output_shapes

    from classify.heads import Rebalanced, SoftmaxSVC

    update_registered_converter(Rebalanced, "AlzmriRebalanced", calculate_linear_classifier_output_shapes,
                                _convert_rebalanced, options=_OPTIONS)
    update_registered_converter(SoftmaxSVC, "AlzmriSoftmaxSVC", calculate_linear_classifier_output_shapes,
                                _convert_softmax_svc, options=_OPTIONS)
    _registered = True


def head_graph(pipeline: Any, n_features: int, n_classes: int) -> Any:
    """The ONNX model of a fitted head: input ``features`` float32 [N, n_features], output ``probabilities`` float32
    [N, n_classes] in class-name order."""
    import onnx
    from onnx import helper, numpy_helper
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    register_converters()
    final = pipeline.steps[-1][1] if hasattr(pipeline, "steps") else pipeline
    with warnings.catch_warnings():  # skl2onnx's SVC converter reads probA_/probB_, deprecated in sklearn 1.9
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*prob[AB]_.*")
        model = convert_sklearn(pipeline, initial_types=[(FEATURES, FloatTensorType([None, int(n_features)]))],
                                target_opset={"": OPSET, "ai.onnx.ml": ML_OPSET}, options={id(final): {"zipmap": False}})
    graph = model.graph
    seen = [o for o in graph.output if o.type.tensor_type.elem_type == onnx.TensorProto.FLOAT]
    if len(seen) != 1:
        raise ValueError(f"the converted head has {len(seen)} float outputs, expected one (the probabilities)")
    rename(graph, seen[0].name, "seen_class_probabilities")  # skl2onnx calls it probabilities too
    place = np.zeros((len(pipeline.classes_), n_classes), np.float32)
    place[np.arange(len(pipeline.classes_)), np.asarray(pipeline.classes_, dtype=int)] = 1.0
    graph.initializer.append(numpy_helper.from_array(place, "alzmri_class_columns"))
    graph.node.append(helper.make_node("MatMul", ["seen_class_probabilities", "alzmri_class_columns"], [PROBABILITIES],
                                       name="alzmri_class_columns_matmul"))
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(PROBABILITIES, onnx.TensorProto.FLOAT, [None, n_classes]))
    return model


def rename(graph: Any, old: str, new: str) -> None:
    """Rename a value everywhere in ``graph`` (inputs, outputs, value infos, node edges)."""
    for v in [*graph.input, *graph.output, *graph.value_info]:
        if v.name == old:
            v.name = new
    for node in graph.node:
        node.input[:] = [new if x == old else x for x in node.input]
        node.output[:] = [new if x == old else x for x in node.output]
