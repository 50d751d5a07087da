"""OnnxClassifier(gradients=True): the ONNX graph converted to a torch twin, checked against
ONNX Runtime and against the torch model the graph was exported from."""

from __future__ import annotations

import io
import pickle
import warnings

import numpy as np
import pytest
import torch
from torch import nn

pytest.importorskip("onnxruntime", reason="needs onnxruntime (pip install 'bastion[onnx]')")
onnx = pytest.importorskip("onnx", reason="needs onnx (pip install 'bastion[onnx]')")

from onnx import TensorProto, helper  # noqa: E402

from bastion.attacks.evasion import ProjectedGradientDescent  # noqa: E402
from bastion.estimators import (  # noqa: E402
    OnnxClassifier,
    TorchClassifier,
    _onnx_torch,
)
from bastion.exceptions import EstimatorError, InvalidParameterError  # noqa: E402


def _export(net: nn.Module, shape: tuple[int, ...], *, fold: bool = True) -> bytes:
    f = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter is deprecated
        torch.onnx.export(
            net.eval(),
            (torch.zeros(1, *shape, dtype=next(net.parameters()).dtype),),
            f,
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
            dynamo=False,
            do_constant_folding=fold,  # False keeps BatchNormalization nodes (no Conv fusion)
        )
    return f.getvalue()


class _Residual(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1, groups=2, dilation=1)
        self.fc = nn.Linear(4 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn(self.conv(x)))
        h = h + self.conv2(h)  # the residual Add
        h = nn.functional.avg_pool2d(h, 2)
        return self.fc(h.view(h.size(0), -1))  # Shape/Gather/Concat/Reshape


class _Misc(nn.Module):
    """The remaining operators: LeakyReLU, Sigmoid, Tanh, Concat, Transpose, Pad, Clip,
    strided dilated Conv, GlobalAveragePool, Squeeze/Unsqueeze, MatMul, Mul, Sub, Div,
    Slice, ReduceMean, Dropout."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(2, 6, 3, stride=2, dilation=2, padding=2)
        self.drop = nn.Dropout(0.5)
        self.fc = nn.Linear(14, 4)
        self.mix = nn.Parameter(torch.randn(7, 7, generator=torch.Generator().manual_seed(9)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.pad(torch.matmul(x, self.mix) * 0.5, (1, 0, 2, 1), value=0.25)
        h = nn.functional.leaky_relu(self.conv(h), 0.1)
        g = nn.functional.adaptive_avg_pool2d(h, 1).squeeze(-1).squeeze(-1)  # (N, 6)
        t = torch.sigmoid(h).transpose(2, 3).mean(dim=(2, 3))  # (N, 6)
        u = torch.clamp(torch.tanh(x.flatten(1)[:, :2] - 0.5) / 2.0, -0.2, 0.3)
        z = torch.cat([g, t, u.unsqueeze(1).squeeze(1)], dim=1)
        return self.fc(self.drop(z))


def _models() -> dict[str, tuple[nn.Module, tuple[int, ...]]]:
    gen = torch.Generator().manual_seed(0)
    nets: dict[str, tuple[nn.Module, tuple[int, ...]]] = {
        "mlp": (
            nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3)),
            (1, 4, 4),
        ),
        "cnn": (
            nn.Sequential(
                nn.Conv2d(1, 4, 3),
                nn.ReLU(),
                nn.MaxPool2d(2),
                nn.Flatten(),
                nn.Linear(4 * 3 * 3, 3),
            ),
            (1, 8, 8),
        ),
        "batchnorm_avgpool": (
            nn.Sequential(
                nn.Conv2d(3, 4, 3, padding=1),
                nn.BatchNorm2d(4),
                nn.ReLU(),
                nn.AvgPool2d(2),
                nn.Flatten(),
                nn.Linear(4 * 3 * 3, 4),
            ),
            (3, 6, 6),
        ),
        "residual": (_Residual(), (1, 8, 8)),
        "misc": (_Misc(), (2, 7, 7)),
    }
    with torch.no_grad():
        for net, _ in nets.values():
            for m in net.modules():
                if isinstance(m, nn.BatchNorm2d):  # non-trivial running statistics
                    m.running_mean.uniform_(-0.5, 0.5, generator=gen)
                    m.running_var.uniform_(0.5, 2.0, generator=gen)
                    m.weight.uniform_(0.5, 1.5, generator=gen)
                    m.bias.uniform_(-0.2, 0.2, generator=gen)
            for p in net.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=gen))
    return nets


@pytest.mark.parametrize("name", ["mlp", "cnn", "batchnorm_avgpool", "residual", "misc"])
def test_twin_equals_onnxruntime_and_the_torch_model(name: str) -> None:
    net, shape = _models()[name]
    graph = _export(net, shape, fold=name != "batchnorm_avgpool")
    if name == "batchnorm_avgpool":
        ops = {n.op_type for n in onnx.load_from_string(graph).graph.node}
        assert {"BatchNormalization", "AveragePool"} <= ops
    clf = OnnxClassifier(graph, gradients=True)
    assert {"logits", "loss_gradient", "class_gradient"} <= clf.capabilities
    ref = TorchClassifier(net, input_shape=shape, nb_classes=clf.nb_classes)
    x = torch.rand(6, *shape, generator=torch.Generator().manual_seed(1))
    y = torch.arange(6) % clf.nb_classes
    # The twin's logits against ONNX Runtime's output (predict runs ONNX Runtime).
    ort_out = clf._ort_scores(x.numpy())
    np.testing.assert_allclose(clf.logits(x).numpy(), ort_out, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(clf.predict(x).numpy(), ref.predict(x).numpy(), atol=1e-5)
    # Gradients against the original torch model's.
    torch.testing.assert_close(clf.class_gradient(x), ref.class_gradient(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        clf.loss_gradient(x, y), ref.loss_gradient(x, y), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(
        clf.class_gradient(x, label=y), ref.class_gradient(x, label=y), rtol=1e-5, atol=1e-5
    )


def test_softmax_output_logits_are_the_softmax_input() -> None:
    net, shape = _models()["cnn"]
    graph = _export(nn.Sequential(net, nn.Softmax(dim=1)), shape)
    clf = OnnxClassifier(graph, gradients=True)
    assert clf.output == "probabilities"
    ref = TorchClassifier(net, input_shape=shape, nb_classes=3)
    x = torch.rand(5, *shape, generator=torch.Generator().manual_seed(2))
    y = torch.tensor([0, 1, 2, 0, 1])
    torch.testing.assert_close(clf.logits(x), ref.logits(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(
        clf.loss_gradient(x, y), ref.loss_gradient(x, y), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(clf.predict(x).numpy(), clf._ort_scores(x.numpy()), atol=0)


def test_log_softmax_output_and_float64() -> None:
    net, shape = _models()["mlp"]
    net = nn.Sequential(net, nn.LogSoftmax(dim=1)).double()
    clf = OnnxClassifier(_export(net, shape), gradients=True)
    assert clf.dtype == torch.float64 and clf.output == "logits"
    ref = TorchClassifier(net, input_shape=shape, nb_classes=3)
    x = torch.rand(4, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(clf.class_gradient(x), ref.class_gradient(x), rtol=1e-12, atol=1e-12)


def test_class_gradient_matches_finite_differences() -> None:
    # float64 (ONNX Runtime's CPU provider has no float64 Conv: an MLP with a smooth layer).
    mlp, shape = _models()["mlp"]
    net = nn.Sequential(mlp[:2], nn.Tanh(), mlp[3]).double()
    clf = OnnxClassifier(_export(net, shape), gradients=True)
    x = torch.rand(1, *shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grad = clf.class_gradient(x, label=2)
    h = 1e-6
    for idx in [(0, 0, 1, 2), (0, 0, 2, 3), (0, 0, 3, 3)]:
        xp, xm = x.clone(), x.clone()
        xp[idx] += h
        xm[idx] -= h
        # Central differences of ONNX Runtime's own output: the gradient is the deployed model's.
        fd = (clf._ort_scores(xp.numpy())[0, 2] - clf._ort_scores(xm.numpy())[0, 2]) / (2 * h)
        assert abs(float(grad[idx]) - fd) < 1e-6


def test_pgd_through_the_twin_equals_pgd_on_the_torch_model() -> None:
    net, shape = _models()["cnn"]
    clf = OnnxClassifier(_export(net, shape), gradients=True, preprocessing=(0.5, 0.25))
    ref = TorchClassifier(net, input_shape=shape, nb_classes=3, preprocessing=(0.5, 0.25))
    x = np.random.default_rng(5).uniform(0, 1, size=(8, *shape)).astype(np.float32)
    kw = {"eps": 0.1, "eps_step": 0.02, "max_iter": 10, "random_state": 0}
    adv = ProjectedGradientDescent(clf, **kw).generate(x)
    adv_ref = ProjectedGradientDescent(ref, **kw).generate(x)
    assert isinstance(adv, np.ndarray)
    np.testing.assert_allclose(adv, adv_ref, atol=1e-5)
    assert np.abs(adv - x).max() <= 0.1 + 1e-6
    assert clf.query_count > 0 and clf.gradient_count > 0


def _erf_graph() -> bytes:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 3])
    w = helper.make_tensor("w", TensorProto.FLOAT, [3, 3], np.eye(3).ravel().tolist())
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Erf", ["h"], ["y"])]
    graph = helper.make_graph(nodes, "erf", [x], [y], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def test_unsupported_operator_is_named_and_predict_only_still_works() -> None:
    graph = _erf_graph()
    with pytest.raises(EstimatorError, match=r"Erf.*supported: .*Conv.*gradients=False"):
        OnnxClassifier(graph, gradients=True)
    clf = OnnxClassifier(graph)
    assert clf.capabilities == frozenset({"predict"})
    assert clf.predict(np.zeros((2, 3), dtype=np.float32)).shape == (2, 3)
    with pytest.raises(EstimatorError, match="loss_gradient"):
        clf.loss_gradient(np.zeros((2, 3), dtype=np.float32), np.array([0, 1]))


def test_a_wrong_conversion_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    net, shape = _models()["mlp"]
    graph = _export(net, shape)
    monkeypatch.setitem(_onnx_torch._OPS, "Relu", lambda node, xs: torch.nn.functional.gelu(xs[0]))
    with pytest.raises(EstimatorError, match="disagrees with ONNX Runtime"):
        OnnxClassifier(graph, gradients=True)
    OnnxClassifier(graph)  # predict-only never converts


def test_check_inputs() -> None:
    net, shape = _models()["mlp"]
    graph = _export(net, shape)
    data = np.random.default_rng(0).normal(size=(4, *shape))  # outside clip_values too
    clf = OnnxClassifier(graph, gradients=True, check_inputs=data)
    assert "logits" in clf.capabilities
    with pytest.raises(InvalidParameterError, match="check_inputs"):
        OnnxClassifier(graph, check_inputs=data)
    with pytest.raises(Exception, match="check_inputs of shape"):
        OnnxClassifier(graph, gradients=True, check_inputs=np.zeros((2, 5)))
    with pytest.raises(InvalidParameterError, match="gradients"):
        OnnxClassifier(graph, gradients="yes")  # type: ignore[arg-type]


def _hand_graph(opset: int) -> bytes:
    """Reshape with 0 and -1, Squeeze/Unsqueeze (axes as inputs from opset 13), Gemm with
    transB and alpha/beta, Constant, Identity, Sub/Div by constants."""
    ints = TensorProto.INT64
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 2, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])
    rng = np.random.default_rng(0)
    inits = [
        helper.make_tensor("shape", ints, [2], [0, -1]),
        helper.make_tensor("w", TensorProto.FLOAT, [4, 6], rng.normal(size=24).tolist()),
        helper.make_tensor("b", TensorProto.FLOAT, [4], rng.normal(size=4).tolist()),
    ]
    if opset >= 13:
        inits.append(helper.make_tensor("axes", ints, [1], [1]))
        unsq = helper.make_node("Unsqueeze", ["f", "axes"], ["u"])
        sq = helper.make_node("Squeeze", ["u", "axes"], ["s"])
    else:
        unsq = helper.make_node("Unsqueeze", ["f"], ["u"], axes=[1])
        sq = helper.make_node("Squeeze", ["u"], ["s"], axes=[1])
    nodes = [
        helper.make_node(
            "Constant", [], ["two"], value=helper.make_tensor("v", TensorProto.FLOAT, [], [2.0])
        ),
        helper.make_node("Sub", ["x", "two"], ["d"]),
        helper.make_node("Div", ["d", "two"], ["e"]),
        helper.make_node("Reshape", ["e", "shape"], ["f"]),
        unsq,
        sq,
        helper.make_node("Identity", ["s"], ["i"]),
        helper.make_node("Gemm", ["i", "w", "b"], ["y"], transB=1, alpha=0.5, beta=2.0),
    ]
    graph = helper.make_graph(nodes, "hand", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model.SerializeToString()


@pytest.mark.parametrize("opset", [11, 13])
def test_hand_built_graph_reshape_squeeze_gemm(opset: int) -> None:
    clf = OnnxClassifier(_hand_graph(opset), gradients=True, input_shape=(2, 3), clip_values=None)
    x = np.random.default_rng(1).normal(size=(5, 2, 3)).astype(np.float32)
    np.testing.assert_allclose(clf.logits(x), clf._ort_scores(x), rtol=1e-5, atol=1e-5)
    # The graph is affine: y = 0.5 * ((x - 2) / 2).reshape(n, 6) @ w.T + 2 b, so each class
    # gradient is 0.25 * w[k], the same for every sample.
    proto = onnx.load_from_string(_hand_graph(opset))
    w = onnx.numpy_helper.to_array(proto.graph.initializer[1])
    g = clf.class_gradient(x)
    np.testing.assert_allclose(g[0].reshape(4, 6), 0.25 * w, rtol=1e-6)


def test_pickle_keeps_the_twin() -> None:
    net, shape = _models()["mlp"]
    clf = OnnxClassifier(_export(net, shape), gradients=True)
    copy = pickle.loads(pickle.dumps(clf))
    x = torch.rand(3, *shape)
    torch.testing.assert_close(copy.class_gradient(x), clf.class_gradient(x))
    assert "gradients=True" in repr(copy)


def test_evaluate_cli_runs_white_box_suites_on_onnx_with_the_flag(tmp_path, capsys) -> None:
    from bastion.cli import main
    from bastion.evaluation import load_model

    net, shape = _models()["cnn"]
    (tmp_path / "net.onnx").write_bytes(_export(net, shape))
    x = np.random.default_rng(0).uniform(0, 1, size=(12, *shape)).astype(np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()
    np.savez(tmp_path / "data.npz", x=x, y=y)
    (tmp_path / "suite.yaml").write_text(
        "name: tiny\nattacks:\n  - name: PGD\n    params: {max_iter: 3}\n", encoding="utf-8"
    )
    argv = [
        "evaluate",
        "--model",
        str(tmp_path / "net.onnx"),
        "--data",
        str(tmp_path / "data.npz"),
        "--eps",
        "0.1",
        "--suite",
        str(tmp_path / "suite.yaml"),
        "--out",
        str(tmp_path / "out"),
        "--quiet",
    ]
    assert main(argv) == 2  # predict-only: the white-box suite is refused
    assert "blackbox" in capsys.readouterr().err
    assert main([*argv, "--onnx-gradients"]) == 0
    model = load_model(tmp_path / "net.onnx", x=x, onnx_gradients=True)
    assert "loss_gradient" in model.capabilities


def _pooling_graph(opset: int) -> bytes:
    """Conv with asymmetric pads, group and dilation; MaxPool with ceil_mode and pads;
    AveragePool with count_include_pad; Clip, Pad (constant), LeakyRelu, then Flatten + Gemm."""
    f = TensorProto.FLOAT
    x = helper.make_tensor_value_info("x", f, ["n", 2, 9, 9])
    y = helper.make_tensor_value_info("y", f, ["n", 3])
    rng = np.random.default_rng(2)
    inits = [
        helper.make_tensor("w", f, [4, 1, 3, 3], rng.normal(size=36).tolist()),
        helper.make_tensor("b", f, [4], rng.normal(size=4).tolist()),
        helper.make_tensor("fw", f, [3, 168], rng.normal(size=504).tolist()),
        helper.make_tensor("fb", f, [3], rng.normal(size=3).tolist()),
        helper.make_tensor("lo", f, [], [-0.5]),
        helper.make_tensor("hi", f, [], [0.75]),
        helper.make_tensor("pads", TensorProto.INT64, [8], [0, 0, 1, 0, 0, 0, 0, 1]),
        helper.make_tensor("pv", f, [], [0.3]),
    ]
    nodes = [
        helper.make_node(
            "Conv", ["x", "w", "b"], ["c"], pads=[0, 1, 2, 1], group=2, dilations=[1, 2]
        ),
        helper.make_node("LeakyRelu", ["c"], ["l"], alpha=0.2),
        helper.make_node("Clip", ["l", "lo", "hi"], ["k"]),
        helper.make_node("Pad", ["k", "pads", "pv"], ["p"], mode="constant"),
        helper.make_node(
            "MaxPool",
            ["p"],
            ["m"],
            kernel_shape=[3, 3],
            strides=[2, 2],
            pads=[1, 1, 1, 1],
            ceil_mode=1,
        ),
        helper.make_node(
            "AveragePool",
            ["m"],
            ["a"],
            kernel_shape=[2, 2],
            pads=[1, 1, 1, 1],
            count_include_pad=1,
        ),
        helper.make_node("Flatten", ["a"], ["fl"]),
        helper.make_node("Gemm", ["fl", "fw", "fb"], ["y"], transB=1),
    ]
    graph = helper.make_graph(nodes, "pool", [x], [y], initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 7
    return model.SerializeToString()


def test_hand_built_graph_pads_pools_clip() -> None:
    clf = OnnxClassifier(_pooling_graph(13), gradients=True, clip_values=(-1, 1))
    x = np.random.default_rng(3).uniform(-1, 1, size=(5, 2, 9, 9)).astype(np.float32)
    np.testing.assert_allclose(clf.logits(x), clf._ort_scores(x), rtol=1e-5, atol=1e-5)
    assert clf.class_gradient(x).shape == (5, 3, 2, 9, 9)
