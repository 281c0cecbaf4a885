"""Reading the layouts users have, and failing in one line on everything that is wrong."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from e2essl.data.files import Layout, check_labels, open_jet_file
from e2essl.errors import DataError

from .conftest import SMALL, random_images, run_cli, write_h5

LAYOUT = Layout(image_size=SMALL)


def ml4sci(path, n=20, seed=0, **overrides):
    """An ML4SCI-layout file written with plain h5py."""
    arrays_ = {
        "X_jets": random_images(n, seed=seed),
        "y": (np.arange(n) % 2).astype(np.float64),
        "pt": np.linspace(80, 150, n),
        "m0": np.linspace(5, 20, n),
    }
    arrays_.update(overrides)
    return write_h5(path, **{k: v for k, v in arrays_.items() if v is not None})


def parquet(path, images_cf, labels, row_group_size=1):
    """The CMS Open Data layout: X_jets as nested lists (C, H, W), one event per row group."""
    table = pa.table(
        {
            "X_jets": [img.tolist() for img in images_cf],
            "pt": np.full(len(labels), 90.0),
            "m0": np.full(len(labels), 9.0),
            "y": labels.astype(np.float64),
        }
    )
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


def test_ml4sci_layout_reads_channels_first_and_in_chunks(tmp_path):
    path = ml4sci(tmp_path / "qg.hdf5", n=20)
    raw = random_images(20)
    with open_jet_file(path, LAYOUT, require_labels=True) as jets:
        assert (jets.n_jets, jets.image_shape, jets.has_labels) == (20, (3, SMALL, SMALL), True)
        np.testing.assert_array_equal(jets.read_images(3, 9), raw[3:9].transpose(0, 3, 1, 2))
        np.testing.assert_array_equal(jets.read_labels(), np.arange(20) % 2)
        np.testing.assert_allclose(jets.read_column("pt"), np.linspace(80, 150, 20), rtol=1e-6)
        assert jets.read_column("absent") is None
        chunks = list(jets.iter_images(chunk=7))
        assert [lo for lo, _ in chunks] == [0, 7, 14]
        np.testing.assert_array_equal(np.concatenate([c for _, c in chunks]), raw.transpose(0, 3, 1, 2))
        idx = np.array([17, 2, 9, 2])
        np.testing.assert_array_equal(jets.read_indices(idx, chunk=4), raw[idx].transpose(0, 3, 1, 2))


def test_sparse_reading_matches_dense(tmp_path):
    path = ml4sci(tmp_path / "qg.h5", n=12)
    with open_jet_file(path, LAYOUT) as jets:
        values, pixel, counts = jets.read_sparse(2, 10)
        dense = jets.read_images(2, 10).reshape(8, -1)
    rebuilt = np.zeros_like(dense)
    rebuilt[np.repeat(np.arange(8), counts), pixel] = values
    np.testing.assert_array_equal(rebuilt, dense)


def test_eight_channel_layout_with_jet_key(tmp_path):
    images = random_images(6, channels=8)
    path = write_h5(tmp_path / "Dataset_Specific_Unlabelled.h5", jet=images)
    layout = Layout(image_key="jet", label_key=None, channels=8, image_size=SMALL)
    with open_jet_file(path, layout) as jets:
        assert jets.image_shape == (8, SMALL, SMALL) and not jets.has_labels
        np.testing.assert_array_equal(jets.read_images(0, 6), images.transpose(0, 3, 1, 2))


def test_parquet_layout_one_event_per_row_group(tmp_path):
    images = random_images(5, channels_last=False, seed=3)
    labels = np.array([1, 0, 1, 1, 0])
    path = parquet(tmp_path / "QCDToGGQQ_IMGjet_RH1all_jet0_run0_n5.test.snappy.parquet", images, labels)
    with open_jet_file(path, LAYOUT, require_labels=True) as jets:
        assert jets.n_jets == 5
        np.testing.assert_array_equal(jets.read_images(1, 4), images[1:4])
        np.testing.assert_array_equal(jets.read_labels(), labels)
        _, _, counts = jets.read_sparse(0, 5)
        assert counts.sum() == np.count_nonzero(images)


def test_parquet_with_wrong_nesting_is_named(tmp_path):
    images = random_images(2, channels=2, channels_last=False)
    path = parquet(tmp_path / "two_channels.parquet", images, np.array([0, 1]))
    with pytest.raises(DataError, match="has 2 channels per jet, expected 3"):
        open_jet_file(path, LAYOUT)


def _error(path, layout=LAYOUT, require_labels=True) -> str:
    with pytest.raises(DataError) as err, open_jet_file(path, layout, require_labels=require_labels) as jets:
        jets.read_images(0, jets.n_jets)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


def test_bad_files_fail_in_one_line_naming_the_file(tmp_path):
    assert "file not found" in _error(tmp_path / "nope.h5")
    assert "is a directory" in _error(tmp_path)
    (tmp_path / "empty.h5").write_bytes(b"")
    assert "file is empty" in _error(tmp_path / "empty.h5")
    (tmp_path / "random.h5").write_bytes(np.random.default_rng(0).bytes(4096))
    assert "not an HDF5 or Parquet file" in _error(tmp_path / "random.h5")
    good = ml4sci(tmp_path / "good.h5", n=50).read_bytes()
    (tmp_path / "truncated.h5").write_bytes(good[: len(good) // 2])
    message = _error(tmp_path / "truncated.h5")
    assert "truncated or corrupt" in message
    (tmp_path / "bad.parquet").write_bytes(b"PAR1" + b"\0" * 100)
    assert "not a readable Parquet file" in _error(tmp_path / "bad.parquet")


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"X_jets": None}, "no dataset 'X_jets' (found: m0, pt, y)"),
        ({"X_jets": random_images(20)[..., 0]}, "expected (N, H, W, C) with C = 3"),
        ({"X_jets": random_images(20, channels=4)}, "no axis of 3 channels"),
        ({"X_jets": random_images(20, size=SMALL + 5)}, f"images are {SMALL + 5} x {SMALL + 5} pixels, expected {SMALL} x {SMALL}"),
        ({"X_jets": np.zeros((0, SMALL, SMALL, 3), np.float32), "y": np.zeros(0), "pt": np.zeros(0), "m0": np.zeros(0)}, "holds no jets"),
        ({"X_jets": np.full((20, SMALL, SMALL, 3), b"a", dtype="S1")}, "expected floating-point pixel energies"),
        ({"y": np.zeros(19)}, "'y' has 19 entries but 'X_jets' has 20 jets"),
        ({"y": None}, "no labels 'y'"),
        ({"y": np.array([0, 1, 2] + [0] * 17)}, "must be 0 (gluon) or 1 (quark): found 2 at jet 2"),
        ({"y": np.array([0.5] * 20)}, "found 0.5 at jet 0"),
        ({"pt": np.zeros(3)}, "'pt' has 3 entries"),
    ],
)
def test_wrong_keys_shapes_and_labels(tmp_path, overrides, expected):
    assert expected in _error(ml4sci(tmp_path / "f.h5", **overrides))


@pytest.mark.parametrize(("value", "problem"), [(np.nan, "NaN or inf"), (np.inf, "NaN or inf"), (-1.0, "negative")])
def test_bad_pixels_stop_or_are_zeroed_on_request(tmp_path, value, problem):
    images = random_images(20)
    images[13, 4, 5, 1] = value
    path = ml4sci(tmp_path / "f.h5", X_jets=images)
    message = _error(path)
    assert f"{problem} pixel values in jet 13" in message and "data.bad_pixels: zero" in message
    with open_jet_file(path, Layout(image_size=SMALL, bad_pixels="zero")) as jets:
        fixed = jets.read_images(0, 20)
    assert fixed[13, 1, 4, 5] == 0.0 and np.isfinite(fixed).all() and (fixed >= 0).all()
    np.testing.assert_array_equal(np.delete(fixed, 13, 0), np.delete(images.transpose(0, 3, 1, 2), 13, 0))


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 30), elements=st.sampled_from([0.0, 1.0, 2.0, -1.0, 0.5, np.nan])))
def test_label_validator_accepts_exactly_zeros_and_ones(labels):
    valid = np.isin(labels, (0, 1)).all()
    if valid:
        np.testing.assert_array_equal(check_labels("f.h5", labels, "y"), labels.astype(np.int64))
    else:
        with pytest.raises(DataError, match="must be 0 \\(gluon\\) or 1 \\(quark\\)"):
            check_labels("f.h5", labels, "y")


@settings(max_examples=40, deadline=None)
@given(
    arrays(
        np.float32,
        (4, 3, 6, 6),
        elements=st.one_of(st.just(0.0), st.floats(0, 100, width=32), st.sampled_from([np.nan, np.inf, -np.inf, -0.5])),
    )
)
def test_pixel_validator_rejects_exactly_nonfinite_or_negative(tmp_path_factory, images):
    path = write_h5(tmp_path_factory.mktemp("p") / "f.h5", X_jets=images.transpose(0, 2, 3, 1))
    layout = Layout(label_key=None, image_size=6)
    bad = ~np.isfinite(images) | (images < 0)
    with open_jet_file(path, layout) as jets:
        if bad.any():
            first = int(np.argmax(bad.reshape(4, -1).any(axis=1)))
            with pytest.raises(DataError, match=f"pixel values in jet {first}"):
                jets.read_images(0, 4)
        else:
            np.testing.assert_array_equal(jets.read_images(0, 4), images)


def test_inspect_accepts_a_file_from_another_program_and_rejects_bad_ones(tmp_path):
    path = ml4sci(tmp_path / "other.h5", n=30)
    ok = run_cli("inspect", str(path), "--plot", str(tmp_path / "mean.png"), cwd=tmp_path)
    # The default image size is 125: a 40 x 40 file is rejected with one line, then accepted with params.
    assert ok.returncode == 1 and ok.stderr.strip().count("\n") == 0 and "expected 125 x 125" in ok.stderr
    (tmp_path / "params.yaml").write_text(f"data:\n  image_size: {SMALL}\n")
    ok = run_cli("inspect", str(path), "--plot", str(tmp_path / "mean.png"), cwd=tmp_path)
    assert ok.returncode == 0, ok.stderr
    import json

    summary = json.loads(ok.stdout)
    assert summary["jets"] == 30 and summary["class_counts"] == {"quark (y=1)": 15, "gluon (y=0)": 15}
    assert set(summary["channel_stats"]) == {"Tracks", "ECAL", "HCAL"}
    assert (tmp_path / "mean.png").read_bytes()[:4] == b"\x89PNG"
    bad = ml4sci(tmp_path / "bad.h5", n=30, y=np.full(30, 3))
    result = run_cli("inspect", str(bad), cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"e2essl inspect: error: {bad}: labels 'y' must be 0 (gluon) or 1 (quark): found 3 at jet 0"
    ]
