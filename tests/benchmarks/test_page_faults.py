from tests.conftest import run_benchmark


def test_page_fault_benchmark_times_both_allocator_settings():
    """benchmarks/page_faults.py, tiny: a child process per setting trains and reports its
    windows, and the two settings' step times give a ratio."""
    args = ["--pairs", "1", "--rounds", "2", "--seconds", "0.3", "--batch", "8", "--width", "8"]
    out = run_benchmark("page_faults", *args, timeout=180)
    rows = {line[:20].strip(): line[20:].split() for line in out.splitlines()[2:4]}
    assert set(rows) == {"glibc defaults", "keep freed memory"}
    assert all(float(ms) > 0 and float(img_s) > 0 for ms, img_s, *_ in rows.values())
    assert "(mean of 2 windows each)" in out
