"""scripts/gpu_check.py is meant for a GPU machine that may be lent for a few minutes: it must not rot meanwhile.

Its --quick sizes run every section on the CPU; this checks that each one runs and reports what it should.
"""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "gpu_check.py"


def test_every_section_runs_at_quick_sizes_on_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--quick", "--reps", "3", "--out", str(out)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    results = json.loads(out.read_text())
    sections = ("environment", "sparse_vs_dense", "row_loader", "step_time", "train_sae", "pipeline", "streaming")
    for name in sections:
        assert results[name].get("ok") is not False, (name, results[name])
    # The fast step agrees with the dense reference, and the step table has a row per (mode, k) with finite times.
    assert results["sparse_vs_dense"]["ok"] is True
    rows = results["step_time"]["rows"]
    assert {r["mode"] for r in rows} == {"topk", "abstopk"} and all(r["step_ms"] > 0 for r in rows)
    # It times the dtype training would autocast to (None on a CPU without native bf16, fp16 on a T4).
    from absae_lib.device import autocast_dtype

    assert results["step_time"]["autocast"] == str(autocast_dtype("cpu"))
