"""Loading a user's model and data for ``bastion evaluate``: formats, refusals, inference,
errors. The models are untrained (equality of predictions needs no training)."""

from __future__ import annotations

import io
import json
import pickle
import subprocess
import sys
import warnings
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from bastion.datasets import load_digits
from bastion.estimators import SklearnClassifier, TorchClassifier
from bastion.evaluation import (
    Dataset,
    check_compatibility,
    check_labels,
    detect_format,
    format_error,
    load_data,
    load_model,
)
from bastion.exceptions import EstimatorError, InputError
from bastion.zoo import SmallCNN

ARCH = {"arch": "bastion.zoo:SmallCNN", "arch_kwargs": {"input_size": 28}}

NO_ONNX = "the onnx extra is not installed: pip install 'bastion[onnx]'"


class _Exploit:
    """Unpickling it writes ``marker``: the classic pickle attack."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return Path.write_text, (self.marker, "code ran")


@pytest.fixture(scope="module")
def digits():
    """16 digits test images (28x28 in [0, 1]) and labels."""
    _, (x, y) = load_digits(size=28, random_state=0)
    return x[:16], y[:16]


@pytest.fixture(scope="module")
def net():
    return SmallCNN(input_size=28, random_state=0).eval()


@pytest.fixture(scope="module")
def reference(net, digits):
    with torch.no_grad():
        return torch.softmax(net(torch.as_tensor(digits[0])), dim=1).numpy()


@pytest.fixture(scope="module")
def files(tmp_path_factory, net):
    """The CNN saved in each format (names without telling suffixes where it matters)."""
    folder = tmp_path_factory.mktemp("models")
    x = torch.rand(2, 1, 28, 28, generator=torch.Generator().manual_seed(0))
    out = {
        "torchscript": folder / "scripted.bin",  # a suffix that says nothing
        "state_dict": folder / "weights.pth",
        "checkpoint": folder / "checkpoint.pt",
        "full": folder / "full.pt",
        "export_static": folder / "static.pt2",
        "export_dynamic": folder / "dynamic.pt",  # detected from its members, not its suffix
    }
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit is deprecated
        torch.jit.save(torch.jit.script(net), out["torchscript"])
    torch.save(net.state_dict(), out["state_dict"])
    torch.save(
        {"epoch": 3, "model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}},
        out["checkpoint"],
    )
    torch.save(net, out["full"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.export.save(torch.export.export(net, (x,)), out["export_static"])
        batch = torch.export.Dim("batch")
        dynamic = torch.export.export(net, (x,), dynamic_shapes=({0: batch},))
        torch.export.save(dynamic, out["export_dynamic"])
    return out


# ----------------------------------------------------------------------------- torch formats


def test_formats_are_detected_from_the_contents(files):
    assert detect_format(files["torchscript"]) == "torchscript"
    assert detect_format(files["state_dict"]) == "torch_save"
    assert detect_format(files["full"]) == "torch_save"
    assert detect_format(files["export_static"]) == "torch_export"
    assert detect_format(files["export_dynamic"]) == "torch_export"


def test_torchscript_loads_with_the_same_predictions(files, digits, reference):
    x, _ = digits
    est = load_model(files["torchscript"], x=x)
    assert isinstance(est, TorchClassifier)
    assert (est.input_shape, est.nb_classes, est.clip_values) == ((1, 28, 28), 10, (0.0, 1.0))
    np.testing.assert_array_equal(est.predict(x), reference)


@pytest.mark.parametrize("kind", ["export_static", "export_dynamic"])
def test_torch_export_loads_with_the_same_predictions(files, digits, reference, kind):
    """A program exported for a batch of 2 runs batches of any size (chunked and padded)."""
    x, y = digits
    est = load_model(files[kind], clip_values=(0, 1))  # the input shape comes from the graph
    assert (est.input_shape, est.nb_classes) == ((1, 28, 28), 10)
    with pytest.raises(InputError, match="clip-values"):
        load_model(files[kind], input_shape=(1, 28, 28))  # the range needs data or the flag
    est = load_model(files[kind], x=x)
    np.testing.assert_allclose(est.predict(x[:5], batch_size=5), reference[:5], atol=1e-6)
    np.testing.assert_allclose(est.predict(x), reference, atol=1e-6)
    grad = est.loss_gradient(x[:3], y[:3])  # white-box: gradients through the graph
    assert grad.shape == (3, 1, 28, 28) and np.abs(grad).sum() > 0


def test_state_dict_with_arch_loads_with_the_same_predictions(files, digits, reference):
    x, _ = digits
    est = load_model(files["state_dict"], x=x, **ARCH)
    np.testing.assert_array_equal(est.predict(x), reference)
    # a training checkpoint with the weights under a key, saved from DataParallel
    est = load_model(files["checkpoint"], x=x, **ARCH)
    np.testing.assert_array_equal(est.predict(x), reference)


def test_state_dict_errors_name_the_flags(files, digits):
    x, _ = digits
    with pytest.raises(InputError, match=r"--arch"):
        load_model(files["state_dict"], x=x)
    with pytest.raises(InputError, match="module:Class"):
        load_model(files["state_dict"], x=x, arch="SmallCNN")
    with pytest.raises(InputError, match="Cannot import"):
        load_model(files["state_dict"], x=x, arch="no_such_module_xyz:Net")
    with pytest.raises(InputError, match="has no 'Nope'"):
        load_model(files["state_dict"], x=x, arch="bastion.zoo:Nope")
    with pytest.raises(InputError, match="--arch-kwargs"):
        load_model(files["state_dict"], x=x, arch="bastion.zoo:SmallCNN", arch_kwargs={"bad": 1})
    with pytest.raises(InputError, match="do not fit"):  # 8x8 architecture, 28x28 weights
        load_model(
            files["state_dict"], x=x, arch="bastion.zoo:SmallCNN", arch_kwargs={"input_size": 8}
        )


def test_building_the_architecture_leaves_the_global_rng_alone(files, digits):
    state = torch.random.get_rng_state()
    load_model(files["state_dict"], x=digits[0], **ARCH)
    assert torch.equal(state, torch.random.get_rng_state())


def test_mean_and_std_go_to_the_estimator(files, digits, net):
    x, _ = digits
    est = load_model(files["torchscript"], x=x, mean=[0.1307], std=[0.3081])
    with torch.no_grad():
        expected = torch.softmax(net((torch.as_tensor(x) - 0.1307) / 0.3081), dim=1).numpy()
    np.testing.assert_allclose(est.predict(x), expected, atol=1e-6)
    assert est.clip_values == (0.0, 1.0)  # attacks stay in input space
    with pytest.raises(InputError, match="--mean"):
        load_model(files["torchscript"], x=x, mean=[0.5, 0.5, 0.5], std=[0.2, 0.2, 0.2])
    with pytest.raises(InputError, match="--clip-values"):
        load_model(files["torchscript"], x=x, clip_values=(1, 0))


# ----------------------------------------------------------------------------- refusals


def test_a_pickled_module_is_refused_unless_trusted(files, digits, reference):
    x, _ = digits
    with pytest.raises(InputError, match="trust-pickle") as info:
        load_model(files["full"], x=x)
    message = format_error(info.value)
    assert "bastion.zoo._models.SmallCNN" in message and "\n" not in message
    assert "TorchScript" in message and "state_dict" in message  # the safe alternatives
    est = load_model(files["full"], x=x, trust_pickle=True)
    np.testing.assert_array_equal(est.predict(x), reference)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("name", ["model.pkl", "model.joblib", "model.pt", "model.pth"])
def test_a_planted_pickle_never_runs(tmp_path, name):
    marker = tmp_path / "marker"
    path = tmp_path / name
    if name.endswith(".pt"):
        torch.save({"state_dict": _Exploit(marker)}, path)  # a torch zip that looks like data
    else:
        path.write_bytes(pickle.dumps(_Exploit(marker)))  # raw pickle (legacy torch.save too)
    with pytest.raises(InputError, match="Refusing to load"):
        load_model(path, input_shape=(1, 28, 28), **ARCH)
    assert not marker.exists()
    # control: the payload is live
    if name.endswith(".pkl"):
        pickle.loads(path.read_bytes())
        assert marker.exists()


def _rewrite(src: Path, dst: Path, change) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for item in zin.infolist():
            zout.writestr(item, change(item.filename, zin.read(item.filename)))


def test_a_torch_export_archive_with_pickled_members_is_refused(files, tmp_path):
    """torch.export.load would unpickle (weights_only=False) a weight marked use_pickle."""
    marker = tmp_path / "marker"
    payload = io.BytesIO()
    torch.save(_Exploit(marker), payload)

    def pickled_weight(name: str, data: bytes) -> bytes:
        if name.endswith("_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"].values()))
            first["use_pickle"] = True
            return json.dumps(config).encode()
        if name.endswith("/weights/weight_0"):
            return payload.getvalue()
        return data

    bad = tmp_path / "bad.pt2"
    _rewrite(files["export_dynamic"], bad, pickled_weight)
    with pytest.raises(InputError, match="pickled object"):
        load_model(bad, input_shape=(1, 28, 28), clip_values=(0, 1))

    def pickled_sample(name: str, data: bytes) -> bytes:
        return payload.getvalue() if "sample_inputs" in name else data

    _rewrite(files["export_dynamic"], bad, pickled_sample)
    with pytest.raises(InputError, match=r"Refusing.*sample_inputs"):
        load_model(bad, input_shape=(1, 28, 28), clip_values=(0, 1))
    assert not marker.exists()


# ----------------------------------------------------------------------------- ONNX


@pytest.fixture(scope="module")
def onnx_file(tmp_path_factory, net):
    pytest.importorskip("onnxruntime", reason=NO_ONNX)
    pytest.importorskip("onnx", reason=NO_ONNX)
    path = tmp_path_factory.mktemp("onnx") / "net.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.zeros(1, 1, 28, 28),),
            str(path),
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            dynamo=False,
        )
    return path


def test_onnx_loads_with_the_same_predictions(onnx_file, digits, reference):
    from bastion.estimators import OnnxClassifier

    x, _ = digits
    assert detect_format(onnx_file) == "onnx"
    est = load_model(onnx_file, x=x)
    assert isinstance(est, OnnxClassifier)
    assert (est.input_shape, est.nb_classes, est.clip_values) == ((1, 28, 28), 10, (0.0, 1.0))
    assert est.capabilities == frozenset({"predict"})
    np.testing.assert_allclose(est.predict(x, batch_size=5), reference, atol=1e-5)
    assert est.query_count == len(x)
    with pytest.raises(EstimatorError, match="loss_gradient"):
        est.loss_gradient(x[:2], np.array([0, 1]))
    clone = pickle.loads(pickle.dumps(est))  # the graph travels as bytes (Ray workers)
    np.testing.assert_allclose(clone.predict(x[:3]), reference[:3], atol=1e-5)
    # the same graph with a suffix that says nothing
    renamed = onnx_file.with_name("net.model")
    renamed.write_bytes(onnx_file.read_bytes())
    assert detect_format(renamed) == "onnx"


def test_onnx_preprocessing_and_shape_errors(onnx_file, digits, net):
    x, _ = digits
    est = load_model(onnx_file, x=x, mean=0.5, std=0.25)
    with torch.no_grad():
        expected = torch.softmax(net((torch.as_tensor(x) - 0.5) / 0.25), dim=1).numpy()
    np.testing.assert_allclose(est.predict(x), expected, atol=1e-5)
    small = np.zeros((2, 1, 8, 8), np.float32)
    with pytest.raises(InputError, match=r"takes samples of shape \(1, 28, 28\)"):
        load_model(onnx_file, x=small)


def test_onnx_fixed_batch_and_softmax_outputs(tmp_path):
    """A graph exported for a fixed batch runs any batch; a final Softmax is not applied twice."""
    pytest.importorskip("onnxruntime", reason=NO_ONNX)
    pytest.importorskip("onnx", reason=NO_ONNX)
    gen = torch.Generator().manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3)).eval()
    with torch.no_grad():
        net[1].weight.copy_(torch.randn(3, 16, generator=gen))
    x = torch.rand(7, 1, 4, 4, generator=gen)
    expected = torch.softmax(net(x), dim=1).detach().numpy()
    fixed, soft = tmp_path / "fixed.onnx", tmp_path / "soft.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.zeros(3, 1, 4, 4),), str(fixed), dynamo=False)
        with_softmax = torch.nn.Sequential(net, torch.nn.Softmax(dim=1))
        torch.onnx.export(
            with_softmax,
            (torch.zeros(1, 1, 4, 4),),
            str(soft),
            input_names=["x"],
            dynamic_axes={"x": {0: "n"}},
            dynamo=False,
        )
    est = load_model(fixed, x=x.numpy())
    np.testing.assert_allclose(est.predict(x.numpy(), batch_size=5), expected, atol=1e-6)
    est = load_model(soft, x=x.numpy())
    assert est.output == "probabilities"
    np.testing.assert_allclose(est.predict(x.numpy()), expected, atol=1e-6)


def test_onnx_without_onnxruntime_says_what_to_install(onnx_file, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(EstimatorError, match="pip install onnxruntime"):
        load_model(onnx_file, input_shape=(1, 28, 28), clip_values=(0, 1))


def test_import_bastion_does_not_import_onnxruntime():
    code = (
        "import sys, bastion, bastion.estimators, bastion.evaluation\n"
        "assert 'onnxruntime' not in sys.modules\n"
        "from bastion.estimators import OnnxClassifier\n"
        "assert 'onnxruntime' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ----------------------------------------------------------------------------- scikit-learn


def test_sklearn_models_load_through_skops(tmp_path):
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.neural_network import MLPClassifier

    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 0)
    model = LogisticRegression(max_iter=200).fit(x, y)
    path = tmp_path / "model.skops"
    sio.dump(model, path)
    assert detect_format(path) == "skops"
    est = load_model(path, x=x)
    assert isinstance(est, SklearnClassifier)
    assert (est.input_shape, est.nb_classes, est.clip_values) == ((4,), 3, None)
    np.testing.assert_allclose(est.predict(x), model.predict_proba(x), atol=1e-5)
    with pytest.raises(InputError, match="--mean"):
        load_model(path, x=x, mean=0.5)
    with pytest.raises(InputError, match="takes 4 features"):
        load_model(path, x=np.zeros((3, 5), np.float32))
    # types skops does not trust by default need naming
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mlp = MLPClassifier(hidden_layer_sizes=(4,), max_iter=5, random_state=0).fit(x, y)
    sio.dump(mlp, path)
    untrusted = sio.get_untrusted_types(file=path)
    if untrusted:
        with pytest.raises(InputError, match="trusted-types"):
            load_model(path, x=x)
    est = load_model(path, x=x, trusted_types=untrusted)
    np.testing.assert_allclose(est.predict(x), mlp.predict_proba(x), atol=1e-5)


# ----------------------------------------------------------------------------- inference, errors


def test_clip_values_are_inferred_from_the_data(files, digits):
    x, _ = digits
    assert load_model(files["torchscript"], x=x).clip_values == (0.0, 1.0)
    x255 = np.round(x * 255).astype(np.uint8)
    assert load_model(files["torchscript"], x=x255).clip_values == (0.0, 255.0)
    with pytest.raises(InputError, match=r"--clip-values.*'none'"):
        load_model(files["torchscript"], x=x * 2 - 1)
    est = load_model(files["torchscript"], x=x * 2 - 1, clip_values=(-1, 1))
    assert est.clip_values == (-1.0, 1.0)
    assert load_model(files["torchscript"], x=x * 2 - 1, clip_values="none").clip_values is None


def test_settings_that_cannot_be_inferred_are_asked_for(files):
    with pytest.raises(InputError, match="--input-shape"):
        load_model(files["torchscript"])
    with pytest.raises(InputError, match="--clip-values"):
        load_model(files["torchscript"], input_shape=(1, 28, 28))
    est = load_model(files["torchscript"], input_shape=(1, 28, 28), clip_values=(0, 1))
    assert est.nb_classes == 10  # from a probe forward pass


def test_a_model_that_does_not_accept_the_data_shape(files, digits):
    small = np.zeros((3, 1, 8, 8), np.float32)
    with pytest.raises(InputError, match=r"does not accept samples of shape \(1, 8, 8\)") as info:
        load_model(files["torchscript"], x=small)
    assert "\n" not in format_error(info.value)
    with pytest.raises(InputError, match=r"takes samples of shape \(1, 28, 28\)"):
        load_model(files["export_dynamic"], x=small)
    with pytest.raises(InputError, match="--input-shape"):
        load_model(files["torchscript"], x=digits[0], input_shape=(784,))
    with pytest.raises(InputError, match="--nb-classes"):
        load_model(files["torchscript"], x=digits[0], nb_classes=3)


def test_missing_and_unknown_model_files(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(tmp_path / "nope.pt")
    with pytest.raises(InputError, match="is a folder"):
        load_model(tmp_path)
    junk = tmp_path / "model.xyz"
    junk.write_bytes(b"hello world")
    with pytest.raises(InputError, match="no known model format"):
        load_model(junk)
    archive = tmp_path / "other.zip"
    with zipfile.ZipFile(archive, "w") as z:
        z.writestr("readme.txt", "hi")
    with pytest.raises(InputError, match="zip archive of no known model format"):
        load_model(archive)


def test_format_error_is_one_line():
    assert format_error(InputError("a\nb")) == "a b"
    assert format_error(ValueError("bad")) == "ValueError: bad"


# ----------------------------------------------------------------------------- data


def test_npz_with_renamed_keys_and_npy_pairs(tmp_path, digits):
    x, y = digits
    path = tmp_path / "test.npz"
    np.savez(path, images=(x * 255).astype(np.uint8), labels=y)
    data = load_data(path, x_key="images", y_key="labels")
    assert isinstance(data, Dataset) and data.format == "npz" and len(data) == 16
    assert data.x.dtype == np.float32 and data.x.max() > 1  # stored values, not rescaled
    np.testing.assert_array_equal(data.y, y)
    with pytest.raises(InputError, match="Available keys"):
        load_data(path)
    with pytest.raises(InputError, match=r"no array named 'label'.*--y-key"):
        load_data(path, x_key="images", y_key="label")
    assert load_data(path, x_key="images", y_key=None).y is None
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "y.npy", np.eye(10)[y])  # one-hot labels become indices
    xs, ys = load_data(tmp_path / "x.npy", y_path=tmp_path / "y.npy")
    np.testing.assert_array_equal(xs, x)
    np.testing.assert_array_equal(ys, y)


def test_image_folder(tmp_path):
    rng = np.random.default_rng(0)
    for name in ("zebra", "cat"):  # label order is the sorted names, not creation order
        (tmp_path / "grey" / name).mkdir(parents=True)
        (tmp_path / "rgb" / name).mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, size=(6, 5), dtype=np.uint8)
            Image.fromarray(pixels, mode="L").save(tmp_path / "grey" / name / f"{i}.png")
            colour = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
            Image.fromarray(colour, mode="RGB").save(tmp_path / "rgb" / name / f"{i}.png")
    data = load_data(tmp_path / "grey")
    assert data.format == "images" and data.class_names == ("cat", "zebra")
    assert data.x.shape == (6, 1, 6, 5) and data.x.dtype == np.float32
    assert 0.0 <= data.x.min() and data.x.max() <= 1.0
    assert data.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert load_data(tmp_path / "rgb").x.shape == (6, 3, 6, 5)
    with pytest.raises(InputError, match=r"Label 1 \(class 'zebra'\) .* 1 classes"):
        check_labels(data.y, 1, class_names=data.class_names)


def test_csv(tmp_path):
    (tmp_path / "header.csv").write_text("a,label,b\n0.5,1,2\n1.5,0,3\n2.5,1,4\n")
    x, y = load_data(tmp_path / "header.csv")
    np.testing.assert_array_equal(x, [[0.5, 2], [1.5, 3], [2.5, 4]])
    assert y.tolist() == [1, 0, 1]
    (tmp_path / "plain.csv").write_text("0.5,2,1\n1.5,3,0\n")
    x, y = load_data(tmp_path / "plain.csv")  # no header: the last column is the label
    assert x.shape == (2, 2) and y.tolist() == [1, 0]
    (tmp_path / "text.csv").write_text("f1;f2;species\n1;2;setosa\n3;4;virginica\n5;6;setosa\n")
    data = load_data(tmp_path / "text.csv")
    assert data.class_names == ("setosa", "virginica") and data.y.tolist() == [0, 1, 0]
    assert load_data(tmp_path / "header.csv", label_column="b").y.tolist() == [2, 3, 4]
    with pytest.raises(InputError, match="--label-column"):
        load_data(tmp_path / "header.csv", label_column="nope")
    (tmp_path / "bad.csv").write_text("a,b,label\n1,x,0\n2,3,1\n")
    with pytest.raises(InputError, match="'x' is not a number"):
        load_data(tmp_path / "bad.csv")


def test_tabular_data_with_a_torch_model(tmp_path):
    """CSV features outside [0, 1] are unbounded; the architecture can be any importable
    class, here torch's own Linear."""
    rows = "\n".join(f"{i * 1.5 - 3},{i},{i % 2}" for i in range(10))
    (tmp_path / "table.csv").write_text("a,b,label\n" + rows + "\n")
    data = load_data(tmp_path / "table.csv")
    torch.save(torch.nn.Linear(2, 2).state_dict(), tmp_path / "linear.pt")
    arch = {"arch": "torch.nn:Linear", "arch_kwargs": {"in_features": 2, "out_features": 2}}
    est = load_model(tmp_path / "linear.pt", x=data.x, **arch)
    assert (est.input_shape, est.nb_classes, est.clip_values) == ((2,), 2, None)
    check_compatibility(est, data)


def test_limit_keeps_class_proportions(tmp_path):
    y = np.repeat([0, 1, 2], [60, 30, 10])
    x = np.arange(100, dtype=np.float32)[:, None].repeat(2, axis=1)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data = load_data(tmp_path / "d.npz", limit=20, random_state=0)
    assert np.bincount(data.y).tolist() == [12, 6, 2]
    assert np.all(np.diff(data.indices) > 0)  # file order kept
    np.testing.assert_array_equal(data.x[:, 0], data.indices)
    again = load_data(tmp_path / "d.npz", limit=20, random_state=0)
    np.testing.assert_array_equal(again.indices, data.indices)
    other = load_data(tmp_path / "d.npz", limit=20, random_state=1)
    assert not np.array_equal(other.indices, data.indices)
    assert load_data(tmp_path / "d.npz", limit=500).indices is None


def test_data_errors(tmp_path, files, digits):
    with pytest.raises(InputError, match="does not exist"):
        load_data(tmp_path / "nope.npz")
    (tmp_path / "d.parquet").write_bytes(b"x")
    with pytest.raises(InputError, match="no known data format"):
        load_data(tmp_path / "d.parquet")
    x = np.zeros((4, 3), np.float32)
    x[2, 1] = np.nan
    np.savez(tmp_path / "nan.npz", x=x, y=np.arange(4))
    with pytest.raises(InputError, match=r"NaN.*sample 2"):
        load_data(tmp_path / "nan.npz")
    np.savez(tmp_path / "labels.npz", x=np.zeros((4, 3)), y=np.array([0, 1, 12, 2]))
    with pytest.raises(InputError, match=r"Label 12 \(sample 2\) .* 10 classes \(0 .. 9\)"):
        load_data(tmp_path / "labels.npz", nb_classes=10)
    np.savez(tmp_path / "frac.npz", x=np.zeros((2, 3)), y=np.array([0.5, 1]))
    with pytest.raises(InputError, match="whole numbers"):
        load_data(tmp_path / "frac.npz")
    est = load_model(files["torchscript"], x=digits[0])
    check_compatibility(est, Dataset(digits[0], digits[1], "mem", "npz"))
    with pytest.raises(InputError, match=r"Label 10 \(sample 0\)"):
        check_compatibility(est, digits[0], np.full(16, 10))
    with pytest.raises(InputError, match=r"samples have shape \(3,\)"):
        check_compatibility(est, np.zeros((4, 3)))
