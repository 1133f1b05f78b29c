"""scripts/bench_mesh.py: one resolution measured in-process, and the table it prints."""
import torch

from scripts.bench_mesh import build_parser, child, format_table


def test_child_measures_extraction_cleanup_and_decimation():
    threads = torch.get_num_threads()
    try:
        row = child(build_parser().parse_args(
            ["--child", "96", "--block-size", "16", "--decimate", "2000", "--threads", "1"]))
    finally:
        torch.set_num_threads(threads)
    assert row["resolution"] == 96 and row["faces"] > 10_000
    assert row["extract_s"] > 0 and row["extract_peak_mib"] >= row["base_peak_mib"] > 0
    # the three floaters are found and removed, the sphere and the torus stay
    assert row["cleanup"].startswith("removed 3 of 5 pieces")
    assert 1980 <= row["decimated_faces"] <= 2000
    table = format_table([row, {"resolution": 2048, "error": "exit status -9"}])
    assert "  96" in table and "2048 exit status -9" in table
