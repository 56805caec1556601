import numpy as np
import pytest
import torch
import torch.nn.functional as F

from metaseg_pgn.store import Record, RecordError, encode_logs, read_meta, read_record, relative_logits, write_record


def _record(tmp_path, align_corners=False):
    torch.manual_seed(0)
    logits = torch.randn(5, 4, 6, dtype=torch.float64) * 4
    pgn = torch.rand(2, 4, 6, dtype=torch.float64) * 1e30
    pgn[0, 0, 0] = 0.0
    rec = Record(frame_id="f1", pred=np.zeros((16, 24), np.uint8), logits=relative_logits(logits),
                 label=np.full((16, 24), 3, np.uint8), **dict(zip(("log_pgn", "log_pgn_offset"), encode_logs(pgn))),
                 pgn_names=["pgn_last_oh_p2", "pgn_last_uni_p2"], align_corners=align_corners,
                 fingerprints={"core": "a", "pgn": "b"}, label_kind="semantic")
    path = tmp_path / "f1.npz"
    write_record(path, rec)
    return path, logits, pgn


@pytest.mark.parametrize("align_corners", [False, True])
def test_probs_and_pgn_maps_match_direct_computation(tmp_path, align_corners):
    path, logits, pgn = _record(tmp_path, align_corners)
    rec = read_record(path, expect={"core": "a"})
    ref = torch.softmax(F.interpolate(logits[None], size=(16, 24), mode="bilinear",
                                      align_corners=align_corners), 1)[0].numpy()
    # float16 relative logits: the probable classes (near the maximum) are nearly exact
    np.testing.assert_allclose(rec.probs(), ref, atol=2e-3)
    maps = rec.pgn_maps()
    ref_pgn = F.interpolate(pgn[None], size=(16, 24), mode="bilinear", align_corners=align_corners)[0]
    for k, name in enumerate(rec.pgn_names):
        np.testing.assert_allclose(maps[name], ref_pgn[k].numpy(), rtol=1e-6)
    assert np.isfinite(rec.pixel_maps()["pgn_last_oh_p2"]).all()
    assert set(rec.pixel_maps()) >= {"E", "D", "V", "pgn_last_oh_p2"}


def test_log_encoding_keeps_zero_exact_and_huge_values_precise(tmp_path):
    # one map spanning 70 orders of magnitude: float32 residuals still hold ~6 digits
    v = torch.tensor([[[0.0, 1e-30, 1.0, 1e40, 3e38, 7e35]]], dtype=torch.float64)
    residual, offset = encode_logs(v)
    rec = Record(frame_id="x", pred=np.zeros((1, 6), np.uint8), logits=np.zeros((2, 1, 6), np.float16),
                 log_pgn=residual, log_pgn_offset=offset, pgn_names=["m"])
    back = rec.pgn_maps()["m"]
    assert back[0, 0] == 0.0
    np.testing.assert_allclose(back[0, 1:], v[0, 0, 1:].numpy(), rtol=1e-5)
    # a realistic spread (a p = 0.1 map over a few orders of magnitude): ~1e-7
    v = torch.tensor([[[1e36, 3e38, 7e35, 2e37]]], dtype=torch.float64)
    residual, offset = encode_logs(v)
    rec.log_pgn, rec.log_pgn_offset, rec.pred = residual, offset, np.zeros((1, 4), np.uint8)
    rec.logits = np.zeros((2, 1, 4), np.float16)
    np.testing.assert_allclose(rec.pgn_maps()["m"][0], v[0, 0].numpy(), rtol=5e-7)


def test_record_from_another_configuration_is_refused(tmp_path):
    path, _, _ = _record(tmp_path)
    assert read_meta(path)["fingerprints"] == {"core": "a", "pgn": "b"}
    with pytest.raises(RecordError, match="another configuration.*'pgn'"):
        read_record(path, expect={"core": "a", "pgn": "c"})


def test_truncated_record_names_the_file(tmp_path):
    path, _, _ = _record(tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(RecordError, match="f1.npz"):
        read_record(path)
