"""Sensor series data: readers, windows vs direct slices, splits, train-only normalisation, NaN policies, bad inputs."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import ASSETS

from longseq.data.series import interpolate_nonfinite, open_series
from longseq.data.series_datamodule import SeriesDataModule, split_by_time
from longseq.errors import UserError

CSV = ASSETS / "series_small.csv"  # 240 samples at 20 Hz: state (text), ecg, resp, acc
OPENSIGNALS = ASSETS / "series_opensignals.txt"  # comment header, no names, trailing tab


def make_dm(path, tmp_path: Path, **kw) -> SeriesDataModule:
    args = {"seq_len": 40, "patch_len": 4, "rate": 20.0, "cache_dir": str(tmp_path / "cache"), "in_channels": 1}
    args.update(kw)
    dm = SeriesDataModule(path=str(path) if not isinstance(path, list) else path, **args)
    dm.setup("fit")
    return dm


def csv_values() -> np.ndarray:
    rows = [r for r in csv.reader(open(CSV)) if r and not r[0].startswith("#")][1:]
    return np.array([[float(x) for x in r[1:]] for r in rows], dtype=np.float32)


def test_every_format_reads_the_same_numbers(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    ref = csv_values()
    csv_arr = open_series(CSV, cache_dir=tmp_path)
    assert csv_arr.columns == ["ecg", "resp", "acc"]  # the text column 'state' is left out
    np.testing.assert_array_equal(np.asarray(csv_arr.data), ref)

    np.save(tmp_path / "rec.npy", ref)
    npy = open_series(tmp_path / "rec.npy")
    assert isinstance(npy.data, np.memmap)  # memory-mapped, not loaded
    np.testing.assert_array_equal(np.asarray(npy.data), ref)

    table = pa.table({"ecg": ref[:, 0], "resp": ref[:, 1].astype(np.float64), "acc": ref[:, 2], "note": ["x"] * len(ref)})
    pq.write_table(table, tmp_path / "rec.parquet", row_group_size=50)
    par = open_series(tmp_path / "rec.parquet", cache_dir=tmp_path)
    assert par.columns == ["ecg", "resp", "acc"]
    np.testing.assert_array_equal(np.asarray(par.data), ref)

    tsv = open_series(OPENSIGNALS, cache_dir=tmp_path)  # .txt = tab-separated, trailing tab ignored
    assert tsv.data.shape == (240, 5) and tsv.columns == ["0", "1", "2", "3", "4"]
    assert np.asarray(tsv.data)[1].tolist() == [1, 1, 0, 507, 565]


def test_a_pickled_series_maps_the_file_again_instead_of_copying_it(tmp_path):
    import pickle

    np.save(tmp_path / "rec.npy", csv_values())
    for arr in (open_series(tmp_path / "rec.npy"), open_series(CSV, cache_dir=tmp_path)):
        blob = pickle.dumps(arr)
        assert len(blob) < 1000  # names only, not the 240 x 3 values
        back = pickle.loads(blob)
        assert isinstance(back.data, np.memmap) and back.columns == arr.columns
        np.testing.assert_array_equal(np.asarray(back.data), np.asarray(arr.data))


def test_windows_equal_direct_slices_of_the_file(tmp_path):
    ref = csv_values()
    for path in (CSV, OPENSIGNALS):
        arr = np.asarray(open_series(path, cache_dir=tmp_path / "c").data)
        cols = ["ecg", "acc"] if path == CSV else [4, 3]
        dm = make_dm(path, tmp_path, channels=cols, in_channels=2, normalize=False, stride=7)
        idx = [arr.shape[1] - 2, 2] if path == CSV else [4, 3]
        for split, ds in dm.datasets.items():
            for i in range(len(ds)):
                _, start, stop = ds.locate(i)
                item = ds[i]
                n = stop - start
                np.testing.assert_array_equal(item["values"][:n].numpy(), arr[start:stop][:, [0, 2] if path == CSV else idx])
                assert item["sample_mask"][:n].all() and not item["sample_mask"][n:].any()
                assert (item["values"][n:] == 0).all()
                if split == "train":
                    assert n == 40
    assert ref.shape == (240, 3)


def test_training_order_is_seeded_and_resumable(tmp_path):
    from torchdata.stateful_dataloader import StatefulDataLoader

    first = [make_dm(CSV, tmp_path, channels=["ecg"], seed=s).train_dataloader() for s in (3, 3, 4)]
    assert isinstance(first[0], StatefulDataLoader)  # Lightning stores its position in checkpoints
    batches = [next(iter(loader))["values"] for loader in first]
    assert torch.equal(batches[0], batches[1]) and not torch.equal(batches[0], batches[2])


def test_evaluation_windows_score_every_sample_once_and_train_windows_stay_in_train(tmp_path):
    dm = make_dm(CSV, tmp_path, channels=["ecg"], seq_len=20, val_fraction=0.25, test_fraction=0.15)
    segs = {s: [g for g in dm.segments if g.split == s] for s in ("train", "val", "test")}
    # time split: train | val | test, consecutive, disjoint, covering the recording
    bounds = [(g.start, g.stop) for s in ("train", "val", "test") for g in segs[s]]
    assert bounds == [(0, 144), (144, 204), (204, 240)]
    for split in ("val", "test"):
        ds = dm.datasets[split]
        covered = np.zeros(240, dtype=int)
        for i in range(len(ds)):
            _, start, stop = ds.locate(i)
            covered[start:stop] += 1
            assert int(ds[i]["sample_mask"].sum()) == stop - start
        seg = segs[split][0]
        assert (covered[seg.start : seg.stop] == 1).all() and covered.sum() == seg.length
    train = dm.datasets["train"]
    assert len(train) == 144 - 20 + 1  # every start, no window crossing into val
    assert all(train.locate(i)[2] <= 144 for i in range(len(train)))
    # token-level padding mask: a patch is real when any of its samples is
    last = dm.datasets["test"][len(dm.datasets["test"]) - 1]
    assert last["padding_mask"].tolist() == [True, True, True, True, False]  # 16 real samples of 20, patch 4


def test_split_points_in_seconds(tmp_path):
    dm = make_dm(CSV, tmp_path, channels=["ecg"], seq_len=20, split_points=[6.0, 9.0])
    assert [(g.split, g.start, g.stop) for g in dm.segments] == [("train", 0, 120), ("val", 120, 180), ("test", 180, 240)]
    with pytest.raises(UserError, match="split_points"):
        split_by_time(dm.recordings, 20.0, split_points=[9.0, 6.0])


def test_normalisation_uses_training_statistics_only(tmp_path):
    x = np.random.default_rng(0).standard_normal((1000, 2)).astype(np.float32)
    x[800:] += 1000.0  # val and test are far away: their values must not leak into the statistics
    np.save(tmp_path / "rec.npy", x)
    dm = make_dm(tmp_path / "rec.npy", tmp_path, channels=[0], in_channels=1, target_channels=[1], out_channels=1)
    train = x[:800]
    np.testing.assert_allclose(dm.mean, train.mean(0), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dm.std, train.std(0), rtol=1e-5)
    item = dm.datasets["train"][0]
    _, start, stop = dm.datasets["train"].locate(0)
    np.testing.assert_allclose(item["values"][:, 0].numpy(), (x[start:stop, 0] - train[:, 0].mean()) / train[:, 0].std(), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(item["target"][:, 0].numpy(), (x[start:stop, 1] - train[:, 1].mean()) / train[:, 1].std(), rtol=1e-4, atol=1e-5)
    assert dm.datasets["test"][0]["values"].mean() > 100  # test data normalised with train stats: still far


def test_several_files_are_recordings_split_in_time_each_with_pooled_train_statistics(tmp_path):
    rng = np.random.default_rng(3)
    a = rng.standard_normal((500, 2)).astype(np.float32)
    b = (3.0 * rng.standard_normal((300, 2)) + 5.0).astype(np.float32)
    np.save(tmp_path / "a.npy", a)
    np.save(tmp_path / "b.npy", b)
    dm = make_dm([str(tmp_path / "a.npy"), str(tmp_path / "b.npy")], tmp_path, channels=[0, 1], in_channels=2)
    assert [r.name for r in dm.recordings] == ["a", "b"]
    train = np.concatenate([a[:400], b[:240]])
    np.testing.assert_allclose(dm.mean, train.mean(0), rtol=1e-6)
    np.testing.assert_allclose(dm.std, train.std(0), rtol=1e-6)
    np.save(tmp_path / "c.npy", np.zeros((300, 3), np.float32))
    with pytest.raises(UserError, match="different numbers of columns"):
        make_dm([str(tmp_path / "a.npy"), str(tmp_path / "c.npy")], tmp_path)


def write_watch_like(tmp_path: Path) -> tuple[Path, Path]:
    """12 recordings of 30-70 samples, 3 classes, 4 subjects, in one .npy plus a recordings table."""
    rng = np.random.default_rng(1)
    parts, rows, start = [], [], 0
    for i in range(12):
        n = 30 + 4 * i
        parts.append(rng.standard_normal((n, 3)).astype(np.float32) + i % 3)
        rows.append([f"r{i}", start, start + n, i % 3, f"s{i // 3}"])
        start += n
    np.save(tmp_path / "watch.npy", np.concatenate(parts))
    with open(tmp_path / "recordings.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["name", "start", "stop", "label", "group"])
        w.writerows(rows)
    return tmp_path / "watch.npy", tmp_path / "recordings.csv"


def test_subject_split_keeps_each_subject_in_one_split_and_pads_short_recordings(tmp_path):
    npy, table = write_watch_like(tmp_path)
    dm = make_dm(
        npy, tmp_path, recordings=str(table), in_channels=3, num_classes=3, split_by="group",
        val_fraction=0.25, test_fraction=0.25, seq_len=64, patch_len=8, pad_short=True,
    )
    groups = {s: {dm.recordings[g.recording].group for g in dm.segments if g.split == s} for s in ("train", "val", "test")}
    assert groups == {"train": {"s0", "s1"}, "val": {"s2"}, "test": {"s3"}}
    val = dm.datasets["val"]
    assert len(val) == 3  # every recording of the subject (<= 64 samples: one padded window each)
    labels = [int(val[i]["label"]) for i in range(len(val))]
    assert labels == [0, 1, 2]
    assert dm.label_counts("train").tolist() == [2, 2, 2]
    explicit = make_dm(npy, tmp_path, recordings=str(table), in_channels=3, num_classes=3, split_by="group",
                       val_groups=["s0"], test_groups=["s3"], seq_len=64, patch_len=8, pad_short=True)
    assert {dm.recordings[g.recording].group for g in explicit.segments if g.split == "val"} == {"s0"}
    with pytest.raises(UserError, match="longer than recording r0"):
        make_dm(npy, tmp_path, recordings=str(table), in_channels=3, split_by="group", seq_len=64, patch_len=8)


def nan_file(tmp_path: Path) -> Path:
    x = np.random.default_rng(2).standard_normal((400, 2)).astype(np.float32)
    x[50:53, 1] = np.nan
    x[300, 0] = np.inf
    np.save(tmp_path / "gappy.npy", x)
    return tmp_path / "gappy.npy"


def test_nan_refuse_names_file_channel_and_position(tmp_path):
    path = nan_file(tmp_path)
    with pytest.raises(UserError, match=r"gappy\.npy: channel 'resp' \(column 1\) has a NaN/inf value at sample 50 .*t = 2\.5 s"):
        make_dm(path, tmp_path, column_names=["ecg", "resp"], channels=["ecg"], target_channels=["resp"], out_channels=1)
    # a channel that is not used is not checked
    x = np.load(path)
    x[300, 0] = 0.0
    np.save(path, x)
    make_dm(path, tmp_path, channels=[0])


def test_nan_interpolate_and_mask(tmp_path):
    path = nan_file(tmp_path)
    raw = np.load(path)
    dm = make_dm(path, tmp_path, channels=[0, 1], in_channels=2, nan_policy="interpolate", normalize=False, seq_len=100)
    item = dm.datasets["train"][0]  # rows 0..99
    v = item["values"].numpy()
    assert np.isfinite(v).all() and item["sample_mask"].all()
    expected = np.interp([50, 51, 52], [49, 53], [raw[49, 1], raw[53, 1]])
    np.testing.assert_allclose(v[50:53, 1], expected, rtol=1e-6)
    np.testing.assert_array_equal(v[:50], raw[:50])
    edge = interpolate_nonfinite(np.array([[np.nan], [1.0], [np.inf], [3.0], [np.nan]], dtype=np.float32))
    assert edge[:, 0].tolist() == [1.0, 1.0, 2.0, 3.0, 3.0]

    dm = make_dm(path, tmp_path, channels=[0, 1], in_channels=2, nan_policy="mask", seq_len=100)
    item = dm.datasets["train"][0]
    mask = item["sample_mask"].numpy()
    assert not mask[50:53].any() and mask[:50].all() and mask[53:].all()
    assert (item["values"][50:53] == 0).all() and torch.isfinite(item["values"]).all()
    assert dm.mean is not None and np.isfinite(dm.mean).all()  # statistics skip the missing values
    assert item["padding_mask"].all()  # patches with some real samples stay real


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"channels": ["ecg", "resp"], "in_channels": 1}, "data.in_channels=1 but data.channels selects 2"),
        ({"channels": ["spo2"]}, "names column 'spo2'.*columns: ecg, resp, acc"),
        ({"channels": [7]}, "column 7 but .* has 3 columns"),
        ({"channels": ["ecg"], "target_channels": ["ecg"], "out_channels": 1}, "both input .* and target"),
        ({"channels": ["ecg"], "seq_len": 400, "patch_len": 4}, r"seq_len=400 samples \(20 s at 20 Hz\) is longer than recording"),
        ({"channels": ["ecg"], "seq_len": 42, "patch_len": 4}, "not a multiple of data.patch_len"),
        ({"channels": ["ecg"], "nan_policy": "ignore"}, "nan_policy must be one of"),
        ({"channels": ["ecg"], "num_classes": 3}, "has label None"),
    ],
)
def test_bad_configuration_is_a_clear_error(tmp_path, kwargs, message):
    with pytest.raises(UserError, match=message):
        make_dm(CSV, tmp_path, **kwargs)


def test_unreadable_or_missing_files_are_clear_errors(tmp_path):
    bad_npy = tmp_path / "broken.npy"
    bad_npy.write_bytes(b"not a numpy file at all")
    ragged = tmp_path / "ragged.csv"
    ragged.write_text("a,b\n1,2\n3\n4,5\n")
    words = tmp_path / "words.csv"
    words.write_text("1,2\n3,hello\n")
    cases = [
        (tmp_path / "missing.npy", "recording file not found"),
        (bad_npy, r"broken\.npy is not a readable \.npy array"),
        (ragged, r"cannot read .*ragged\.csv as delimited numbers: .*columns"),
        (words, r"cannot read .*words\.csv as delimited numbers"),
        (tmp_path, "directory"),
        (tmp_path / "rec.xlsx", "not found"),
    ]
    for path, message in cases:
        with pytest.raises(UserError, match=message):
            open_series(path, cache_dir=tmp_path / "cache")
    (tmp_path / "rec.xlsx").write_bytes(b"PK")
    with pytest.raises(UserError, match="cannot tell the format"):
        open_series(tmp_path / "rec.xlsx")
    with pytest.raises(UserError, match="data.rate"):
        SeriesDataModule(seq_len=40, path=str(CSV), rate=None).setup("fit")


def test_text_cache_is_reused_and_refreshed_when_the_file_changes(tmp_path):
    src = tmp_path / "rec.csv"
    src.write_text("x\n1\n2\n3\n")
    assert np.asarray(open_series(src, cache_dir=tmp_path / "c").data)[:, 0].tolist() == [1, 2, 3]
    assert len(list((tmp_path / "c").glob("*.f32"))) == 1
    assert np.asarray(open_series(src, cache_dir=tmp_path / "c").data)[:, 0].tolist() == [1, 2, 3]
    src.write_text("x\n1\n2\n3\n4\n")
    assert np.asarray(open_series(src, cache_dir=tmp_path / "c").data)[:, 0].tolist() == [1, 2, 3, 4]
    assert not list(tmp_path.glob("rec.csv.*"))  # nothing written beside the user's file


def test_a_million_sample_window_from_a_memory_mapped_file(tmp_path):
    n = 1_048_576 + 50_000
    x = np.lib.format.open_memmap(tmp_path / "long.npy", mode="w+", dtype=np.float32, shape=(n, 1))
    x[:, 0] = np.arange(n, dtype=np.float32)
    x.flush()
    del x
    dm = make_dm(tmp_path / "long.npy", tmp_path, seq_len=1_048_576, patch_len=256, normalize=False,
                 split_points=[1_048_576 / 20.0, (1_048_576 + 20_000) / 20.0], stride=1000)
    item = dm.datasets["train"][0]
    assert item["values"].shape == (1_048_576, 1) and item["padding_mask"].shape == (4096,)
    assert item["values"][-1, 0] == 1_048_575
    assert len(dm.datasets["val"]) == 1 and int(dm.datasets["val"][0]["sample_mask"].sum()) == 20_000
