"""ImageNet weights for keras.applications backbones (``--set model.weights=imagenet``).

These machines cannot reach Keras' weight server, so the download path is tested against a
real HTTP server on 127.0.0.1 serving a weights file made here: Keras' own download code
(``keras.utils.get_file``: fetch, hash check, cache) runs unchanged; only where it looks
(the base URL, the published hash, the cache folder) is pointed at the test's files.
"""
from __future__ import annotations

import functools
import hashlib
import socket
import threading
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import keras
import numpy as np
import pytest

from pneumoscan.config import ModelConfig
from pneumoscan.errors import WeightsError
from pneumoscan.models import build_model

SIZE = 64
KEY = "small_224_1.0_float"  # MobileNetV3Small, alpha 1.0
FILE = f"weights_mobilenet_v3_{KEY}_no_top_v2.h5"


class QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def do_GET(self):
        self.server.requests.append(self.path)
        super().do_GET()


@pytest.fixture
def weights_server(tmp_path, monkeypatch):
    """A weights file of known values, served over HTTP, with Keras pointed at it."""
    from keras.src.applications import mobilenet_v3
    from keras.src.backend import config as keras_config

    served = tmp_path / "served"
    served.mkdir()
    keras.utils.set_random_seed(7)
    source = keras.applications.MobileNetV3Small(include_top=False, weights=None, input_shape=(SIZE, SIZE, 3),
                                                 pooling="avg")
    # The published files are in the Keras 2 HDF5 layout that load_weights reads for ".h5" names.
    import h5py
    from keras.src.legacy.saving import legacy_h5_format

    with h5py.File(served / FILE, "w") as fh:
        legacy_h5_format.save_weights_to_hdf5_group(fh, source)
    digest = hashlib.sha256((served / FILE).read_bytes()).hexdigest()

    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(served)))
    server.requests = []
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    monkeypatch.setenv("no_proxy", "*")
    monkeypatch.setattr(mobilenet_v3, "BASE_WEIGHT_PATH", f"http://127.0.0.1:{server.server_address[1]}/")
    monkeypatch.setitem(mobilenet_v3.WEIGHTS_HASHES, KEY, (mobilenet_v3.WEIGHTS_HASHES[KEY][0], digest))
    (tmp_path / "keras_home").mkdir()  # Keras falls back to /tmp/.keras when the folder is not writable
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(tmp_path / "keras_home"))  # an empty Keras cache
    yield server, source
    server.shutdown()
    server.server_close()
    thread.join()


def backbone(model):
    return next(layer for layer in model.layers if isinstance(layer, keras.Model))


def test_imagenet_weights_are_downloaded_checked_cached_and_loaded(weights_server, tmp_path):
    server, source = weights_server
    model = build_model(ModelConfig(name="mobilenetv3small", weights="imagenet"), SIZE)
    assert server.requests == [f"/{FILE}"]
    for got, want in zip(backbone(model).get_weights(), source.get_weights()):
        np.testing.assert_array_equal(got, want)
    assert (tmp_path / "keras_home" / "models" / FILE).is_file()
    # The second model comes from the Keras cache folder: no new request.
    build_model(ModelConfig(name="mobilenetv3small", weights="imagenet"), SIZE)
    assert len(server.requests) == 1


def test_a_weights_file_path_works_offline(weights_server, tmp_path):
    server, source = weights_server
    path = tmp_path / "served" / FILE
    model = build_model(ModelConfig(name="mobilenetv3small", weights=str(path)), SIZE)
    np.testing.assert_array_equal(backbone(model).get_weights()[0], source.get_weights()[0])
    assert server.requests == []
    with pytest.raises(WeightsError, match="weights file not found"):
        build_model(ModelConfig(name="mobilenetv3small", weights=str(tmp_path / "nothing.h5")), SIZE)


def test_no_connection_is_a_clear_error_with_the_offline_fix(weights_server, monkeypatch):
    from keras.src.applications import mobilenet_v3

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    monkeypatch.setattr(mobilenet_v3, "BASE_WEIGHT_PATH", f"http://127.0.0.1:{closed}/")
    with pytest.raises(WeightsError, match="could not download ImageNet weights.*pass its path as model.weights"):
        build_model(ModelConfig(name="mobilenetv3small", weights="imagenet"), SIZE)
