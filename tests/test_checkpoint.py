"""Checkpoints: round trips of params/state/metadata, clear errors, atomic writes."""

import os

import mlx.core as mx
import numpy as np
import pytest
from mlx.utils import tree_flatten

from reptile_fn import checkpoint as ck
from reptile_fn.errors import CheckpointError, ReptileFnError


def _params():
    k = mx.random.split(mx.random.key(3), 3)
    return {
        "layer0": {"w": mx.random.normal((3, 4), key=k[0]), "b": mx.random.normal((4,), key=k[1])},
        "out": {"w": mx.random.normal((4, 2), key=k[2]), "b": mx.zeros((2,))},
        "scale": mx.array(2.5),
    }


def _state():
    return {
        "iteration": mx.array(7, dtype=mx.int32),
        "outer": {},  # e.g. plain SGD keeps no state: an empty sub-tree
        "adam": {"m": {"w": mx.full((3, 4), -1.5)}, "count": mx.array([1, 2, 3], dtype=mx.int32)},
    }


def _like(tree):
    """A tree of the same structure and shapes/dtypes, but different values."""
    if isinstance(tree, dict):
        return {k: _like(v) for k, v in tree.items()}
    return mx.zeros(tree.shape, dtype=tree.dtype) + 99


def _assert_tree_equal(a, b):
    assert isinstance(a, dict) and isinstance(b, dict)
    assert a.keys() == b.keys()
    for k in a:
        if isinstance(a[k], dict):
            _assert_tree_equal(a[k], b[k])
        else:
            assert a[k].dtype == b[k].dtype, k
            assert a[k].shape == b[k].shape, k
            np.testing.assert_array_equal(np.array(a[k]), np.array(b[k]), err_msg=k)


def _save_real(path):
    return ck.save(path, _params(), _state(), {"iteration": 7, "config": {"seed": 1}})


# --- round trips --------------------------------------------------------------------------------

def test_params_and_state_round_trip(tmp_path):
    params, state = _params(), _state()
    path = ck.save(tmp_path / "c.safetensors", params, state, {"iteration": 7})
    assert path == tmp_path / "c.safetensors"
    arrays, meta = ck.load(path)
    assert set(arrays) == {f"params.{k}" for k, _ in tree_flatten(params)} | {f"state.{k}" for k, _ in tree_flatten(state)}
    got_params = ck.restore(arrays, "params", _like(params))
    got_state = ck.restore(arrays, "state", _like(state))
    _assert_tree_equal(got_params, params)
    _assert_tree_equal(got_state, state)  # includes the empty sub-dict "outer" and int leaves
    assert got_state["outer"] == {}
    assert got_state["iteration"].dtype == mx.int32
    assert got_state["iteration"].item() == 7


def test_restore_casts_to_the_dtype_of_like(tmp_path):
    path = ck.save(tmp_path / "c.safetensors", {"w": mx.array([1.5, 2.5], dtype=mx.float32)})
    arrays, _ = ck.load(path)
    got = ck.restore(arrays, "params", {"w": mx.zeros((2,), dtype=mx.float16)})
    assert got["w"].dtype == mx.float16
    np.testing.assert_array_equal(np.array(got["w"]), [1.5, 2.5])


def test_a_tensor_the_model_lacks_is_refused_not_dropped(tmp_path):
    """An added tensor (an altered file, or one written for a bigger model) is named, not silently ignored."""
    params = _params()
    path = ck.save(tmp_path / "c.safetensors", {**params, "extra": {"w": mx.ones((2,))}})
    arrays, _ = ck.load(path)
    with pytest.raises(CheckpointError, match="has tensors the model does not \\(params.extra.w\\)"):
        ck.restore(arrays, "params", _like(params))
    _assert_tree_equal(ck.restore(arrays, "params", _like(params), fresh=lambda p: False), params)  # a fresh head's case


def test_without_state(tmp_path):
    path = ck.save(tmp_path / "c.safetensors", _params())
    arrays, meta = ck.load(path)
    assert all(k.startswith("params.") for k in arrays)
    assert meta == {}
    assert ck.restore(arrays, "state", {}) == {}


def test_metadata_round_trip(tmp_path):
    metadata = {
        "iteration": 1234,
        "config": {"inner_lr": 0.02, "tasks": {"families": ["linear", "xor"], "k_shot": 5}, "eval": {"inner_lr": None}},
        "note": "héllo ± ünïcode",
        "flag": True,
        "ratio": 0.1,
    }
    path = ck.save(tmp_path / "c.safetensors", _params(), _state(), metadata)
    _, meta = ck.load(path)
    assert meta == metadata


def test_save_creates_parent_folders(tmp_path):
    path = ck.save(tmp_path / "a" / "b" / "c.safetensors", _params())
    assert path.is_file()


def test_save_overwrites(tmp_path):
    path = tmp_path / "c.safetensors"
    ck.save(path, {"w": mx.zeros((2,))}, metadata={"iteration": 1})
    ck.save(path, {"w": mx.ones((2,))}, metadata={"iteration": 2})
    arrays, meta = ck.load(path)
    assert meta["iteration"] == 2
    np.testing.assert_array_equal(np.array(arrays["params.w"]), [1.0, 1.0])


# --- errors -------------------------------------------------------------------------------------

def _checkpoint_error(path) -> str:
    with pytest.raises(CheckpointError) as info:
        ck.load(path)
    assert isinstance(info.value, ReptileFnError)
    message = str(info.value)
    assert str(path) in message
    return message


def test_missing_file(tmp_path):
    message = _checkpoint_error(tmp_path / "nope.safetensors")
    assert "does not exist" in message


def test_directory_is_not_a_checkpoint(tmp_path):
    _checkpoint_error(tmp_path)


@pytest.mark.parametrize("data", [b"", b"\x00" * 3, os.urandom(64), b"this is not a checkpoint at all" * 10])
def test_garbage_file(tmp_path, data):
    path = tmp_path / "c.safetensors"
    path.write_bytes(data)
    message = _checkpoint_error(path)
    assert "corrupt" in message


@pytest.mark.parametrize("keep", [0.99, 0.5, 0.05])
def test_truncated_real_checkpoint(tmp_path, keep):
    path = _save_real(tmp_path / "c.safetensors")
    data = path.read_bytes()
    n = int(len(data) * keep)
    assert 0 < n < len(data)
    path.write_bytes(data[:n])
    message = _checkpoint_error(path)
    assert "corrupt" in message


def test_truncated_by_a_few_bytes(tmp_path):
    path = _save_real(tmp_path / "c.safetensors")
    path.write_bytes(path.read_bytes()[:-3])
    _checkpoint_error(path)


def test_foreign_safetensors_file(tmp_path):
    path = tmp_path / "other.safetensors"
    mx.save_safetensors(str(path), {"weight": mx.ones((2, 2))}, metadata={"format": "pt"})
    message = _checkpoint_error(path)
    assert "not a reptile_fn checkpoint" in message


def test_foreign_safetensors_without_metadata(tmp_path):
    path = tmp_path / "other.safetensors"
    mx.save_safetensors(str(path), {"weight": mx.ones((2, 2))})
    assert "not a reptile_fn checkpoint" in _checkpoint_error(path)


def test_corrupt_metadata(tmp_path):
    path = tmp_path / "c.safetensors"
    mx.save_safetensors(str(path), {"params.w": mx.ones((2,))}, metadata={"format": ck.FORMAT, "iteration": "{not json"})
    assert "metadata" in _checkpoint_error(path)


def test_restore_shape_mismatch_names_the_key(tmp_path):
    path = _save_real(tmp_path / "c.safetensors")
    arrays, _ = ck.load(path)
    like = _like(_params())
    like["layer0"]["w"] = mx.zeros((5, 4))
    with pytest.raises(CheckpointError) as info:
        ck.restore(arrays, "params", like, source="ckpt.safetensors")
    message = str(info.value)
    assert "params.layer0.w" in message
    assert "(3, 4)" in message and "(5, 4)" in message
    assert "ckpt.safetensors" in message


def test_restore_missing_key_names_it(tmp_path):
    path = _save_real(tmp_path / "c.safetensors")
    arrays, _ = ck.load(path)
    like = _like(_params())
    like["layer1"] = {"w": mx.zeros((4, 4))}
    with pytest.raises(CheckpointError, match=r"params\.layer1\.w"):
        ck.restore(arrays, "params", like)


# --- atomic writes ------------------------------------------------------------------------------

def test_no_temp_file_left_behind(tmp_path):
    path = tmp_path / "checkpoint.safetensors"
    ck.save(path, _params(), _state(), {"iteration": 1})
    ck.save(path, _params(), _state(), {"iteration": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.safetensors"]


def test_failed_save_leaves_existing_checkpoint_untouched(tmp_path, monkeypatch):
    path = _save_real(tmp_path / "checkpoint.safetensors")
    before, mtime = path.read_bytes(), path.stat().st_mtime_ns

    def boom(file, arrays, metadata=None):
        # write part of the temp file, as a crash mid-write would, then fail
        with open(file, "wb") as f:
            f.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ck.mx, "save_safetensors", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ck.save(path, {"w": mx.zeros((1,))}, metadata={"iteration": 99})
    monkeypatch.undo()

    assert path.read_bytes() == before
    assert path.stat().st_mtime_ns == mtime
    arrays, meta = ck.load(path)  # still a valid checkpoint
    assert meta["iteration"] == 7
    _assert_tree_equal(ck.restore(arrays, "params", _like(_params())), _params())


def test_failed_save_leaves_no_checkpoint_where_there_was_none(tmp_path, monkeypatch):
    path = tmp_path / "checkpoint.safetensors"

    def boom(file, arrays, metadata=None):
        raise RuntimeError("disk full")

    monkeypatch.setattr(ck.mx, "save_safetensors", boom)
    with pytest.raises(RuntimeError):
        ck.save(path, _params())
    assert not path.exists()


def test_leaves_equal_to_the_reference_are_stored_as_digests(tmp_path):
    """A leaf still at the reference (e.g. a frozen pretrained encoder) is written as its SHA-256 and taken back
    from the reader's tree after the digest is checked; trained leaves are written in full."""
    params, state = {**_params(), "big": mx.random.normal((64, 64), key=mx.random.key(5))}, _state()
    reference = {**params, "out": {"w": params["out"]["w"] + 1.0, "b": params["out"]["b"]}}  # out.w "trained"
    path = ck.save(tmp_path / "c.safetensors", params, state, {"iteration": 3}, reference=reference)
    arrays, meta = ck.load(path)
    # equal and larger than a digest (32 bytes): layer0.w (48 bytes) and big; out.b and scale are smaller
    assert {k for k in arrays if k.startswith("params.")} == {"params.out.w", "params.layer0.b", "params.out.b",
                                                               "params.scale"}
    assert {k for k in arrays if k.startswith("derived.")} == {"derived.params.layer0.w", "derived.params.big"}
    assert all(arrays[k].shape == (32,) and arrays[k].dtype == mx.uint8 for k in arrays if k.startswith("derived."))
    _assert_tree_equal(ck.restore(arrays, "params", reference), params)
    _assert_tree_equal(ck.restore(arrays, "state", _like(state)), state)
    assert os.path.getsize(path) < os.path.getsize(ck.save(tmp_path / "full.safetensors", params, state)) - 64 * 64 * 3
    # a reader whose tree differs where the file holds only a digest (another encoder, say) gets an error
    other = {**reference, "big": reference["big"] + 1e-6}
    with pytest.raises(CheckpointError, match="params.big as the model's initial value .* another value there"):
        ck.restore(arrays, "params", other)
    # same values, another shape or dtype: not derived, stored in full
    arrays2, _ = ck.load(ck.save(tmp_path / "d.safetensors", params, reference={"big": params["big"].astype(mx.float16)}))
    assert "params.big" in arrays2 and not any(k.startswith("derived.") for k in arrays2)


def test_save_refuses_what_it_could_not_write_or_read_back(tmp_path):
    """A metadata 'format' made the saved file unreadable; a None leaf was MLX's 'std::bad_cast'; a key holding a
    '.' that collides with a nested path kept one of the two leaves."""
    from reptile_fn import checkpoint as ck

    p = {"w": mx.ones((2,))}
    for own in ("format", ck.SEAL):
        with pytest.raises(ValueError, match=f"'{own}'.* are the checkpoint's own"):
            ck.save(tmp_path / "a.safetensors", p, metadata={own: "v2"})
    with pytest.raises(TypeError, match="params.x is a NoneType, not an mx.array"):
        ck.save(tmp_path / "b.safetensors", {**p, "x": None})
    with pytest.raises(ValueError, match="same dotted path"):
        ck.save(tmp_path / "c.safetensors", {"a.b": mx.ones((1,)), "a": {"b": mx.zeros((1,))}})
    assert not list(tmp_path.iterdir())  # nothing written
