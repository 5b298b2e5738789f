"""out.log in the run folder: what stderr shows, the progress lines a terminal's bar replaces, a failed run's
sentence; host and rank stamps in multi-process runs (the torchrun case is in test_train_rdm.py)."""
from __future__ import annotations

import io
import logging
import socket

from cifd_clip import runlog
from cifd_clip.cli import main
from cifd_clip.engine.progress import Progress


def _train(spec, logs, name, *extra):
    return main(["train", "--model", "tiny-vit-student", "--train-data", spec, "--batch-size", "8",
                 "--workers", "0", "--warmup", "2", "--logs", str(logs), "--name", name, *extra])


def test_a_run_logs_to_out_log_a_resume_appends_and_a_refused_resume_leaves_its_sentence(demo_train_spec, tmp_path):
    assert _train(demo_train_spec, tmp_path, "r", "--stop-after-steps", "3") == 0
    log = tmp_path / "r" / "out.log"
    first = log.read_text()
    assert "logging to" in first and "done: 3 steps" in first and "step 3/6" in first
    assert _train(demo_train_spec, tmp_path, "r", "--resume", "latest") == 0
    second = log.read_text()
    assert second.startswith(first) and "resuming from" in second and "done: 6 steps" in second
    assert _train(demo_train_spec, tmp_path, "r", "--resume", "latest", "--batch-size", "4") == 1
    last = log.read_text().splitlines()[-1]
    assert "ERROR cifd-clip train: error: cannot resume from" in last and "steps per epoch" in last
    assert not list((tmp_path / "r").glob("out-*.log"))  # one process: no per-rank file


def test_a_run_that_fails_before_writing_anything_leaves_no_folder(demo_train_spec, tmp_path):
    assert _train(demo_train_spec, tmp_path, "bad", "--model", "no-such-model") == 1
    assert not (tmp_path / "bad").exists()


class _Terminal(io.StringIO):
    def isatty(self):
        return True


def test_with_a_live_bar_the_progress_lines_go_to_the_file_only(tmp_path):
    console_text = io.StringIO()
    console = logging.StreamHandler(console_text)
    console.addFilter(runlog._NotFileOnly())
    root = logging.getLogger()
    root.addHandler(console)
    try:
        runlog.open_run_log(tmp_path)
        bar = Progress(4, stream=_Terminal(), lines=2)
        for step in range(1, 5):
            bar.update(step, loss=1.0, samples_per_s=2.0)
        bar.close()
        logging.getLogger("cifd_clip.test").info("a line for both")
    finally:
        runlog.close_run_logs()
        root.removeHandler(console)
    text = (tmp_path / "out.log").read_text()
    assert "step 2/4 (50%)" in text and "step 4/4 (100%)" in text and "a line for both" in text
    assert "step 2/4" not in console_text.getvalue() and "a line for both" in console_text.getvalue()


def test_lines_of_a_multi_process_run_carry_host_and_rank(tmp_path):
    assert runlog.stamp(0, 1) == ""
    assert runlog.stamp(3, 4) == f"[{socket.gethostname().split('.')[0]} rank 3/4] "
    assert runlog.open_run_log(tmp_path, rank=1, world_size=2) is None  # not asked for: rank 0's file only
    path = runlog.open_run_log(tmp_path, rank=1, world_size=2, every_rank=True)
    try:
        logging.getLogger("cifd_clip.test").warning("from rank one")
    finally:
        runlog.close_run_logs()
    assert path.name == "out-1.log" and "rank 1/2] WARNING from rank one" in path.read_text()
