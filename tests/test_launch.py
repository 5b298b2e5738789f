"""Paper-scale recipes (recipes/clip/) through `cifd-clip launch`: every printed launch line runs, mistakes in a
recipe stop it with one sentence, and every recipe's smoke variant runs end to end: as 2 nodes x 1 process on
localhost through recipes/launch/node.sh, under torchrun with 2 gloo processes for 2 GPUs, as one process, and
as 2 srun tasks without torchrun (recipes/launch/slurm-srun.sbatch, srun played by a stand-in script).
The smoke runs take minutes (every step is a process that imports torch and open_clip): they are marked
`recipes`, which `make test-recipes` and CI run and `make test` leaves out."""
from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from cifd_clip import cli
from cifd_clip.config import resolve
from cifd_clip.launch.recipe import SINGLE_PROCESS_STAGES, stage_config

REPO = Path(__file__).resolve().parents[1]
# the whole-run recipes (the classification folder also holds per-stage config files, which have no steps)
RECIPES = sorted(p for folder in ("clip", "classification") for p in (REPO / "recipes" / folder).glob("*.yaml")
                 if "steps" in yaml.safe_load(p.read_text()) or "base" in yaml.safe_load(p.read_text()))
ENV = dict(os.environ, OMP_NUM_THREADS="1")
VITS16 = REPO / "recipes/clip/vitl14-vits16.yaml"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def launch(*args, timeout=900, env=None):
    return subprocess.run([sys.executable, "-m", "cifd_clip", "launch", *map(str, args)], cwd=REPO,
                          capture_output=True, text=True, timeout=timeout, env=env or ENV)


def test_every_paper_setting_has_a_recipe():
    assert {r.stem for r in RECIPES} == {"vitl14-vits16", "vitl14-rn50", "vitl14-vitb16", "vitb16-rdm-ablation",
                                         "cifar100-wrn40_2-wrn40_1", "imagenet-r34-r18"}


@pytest.mark.parametrize("recipe", RECIPES, ids=[r.stem for r in RECIPES])
def test_every_printed_launch_line_reads_a_complete_stage_config(recipe, tmp_path, capsys):
    assert cli.main(["launch", "--recipe", str(recipe), "--print-only", "--out", str(tmp_path / "run"),
                     "--nproc-per-node", "4"]) == 0
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("[")]
    assert len(lines) >= 5
    for line in lines:
        command = shlex.split(line.split(": ", 1)[1])
        stage, config_file = command[command.index("--config") - 1], command[command.index("--config") + 1]
        if stage in SINGLE_PROCESS_STAGES:
            assert command[0] == "cifd-clip"
        else:  # torchrun's own parser must not see our options: `-m -- cifd_clip`
            assert command[:4] == ["torchrun", "--nproc-per-node", "4", "--standalone"]
            assert command[command.index("-m"):command.index("-m") + 3] == ["-m", "--", "cifd_clip"]
        resolve(stage_config(stage), {}, config_file)  # every required option is there and valid


def write_recipe(folder: Path, text: str) -> Path:
    path = folder / "recipe.yaml"
    path.write_text(text)
    return path


@pytest.mark.parametrize("text, message", [
    ("vars: {out: x}\nsteps:\n  - {name: a, stage: distill, options: {modle: ViT-S-16}}\n",
     "step 'a' of .*recipe.yaml: `cifd-clip distill` has no option 'modle'"),
    ("vars: {out: x}\nsteps:\n  - {name: a, stage: train, options: {model: '${student}'}}\n",
     "uses \\$\\{student\\}, which the recipe's vars do not define"),
    ("vars: {out: x}\nsteps:\n  - {name: a, stage: demo}\n", "stage 'demo' cannot run in a recipe"),
    ("vars: {out: x}\nsteps:\n  - {name: a, stage: bench, processes: all}\n", "runs as one process"),
    ("base: missing.yaml\n", "starts from .*missing.yaml, which does not exist"),
    ("steps:\n  - {name: a, stage: train}\n", "needs a var `out`"),
    ("vars: {out: x}\nsteps:\n  - {name: a, stage: train, options: {epochs: many}}\n",
     "config key 'epochs' in step 'a' .* must be an integer"),
])
def test_a_mistake_in_a_recipe_stops_it_with_one_sentence_before_anything_runs(tmp_path, capsys, text, message):
    import re
    out = tmp_path / "x"
    recipe = write_recipe(tmp_path, text.replace("{out: x}", f"{{out: {out}}}"))
    assert cli.main(["launch", "--recipe", str(recipe)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and re.search(message, err), err
    assert not out.exists()  # nothing ran, nothing was written


def test_launch_options_that_cannot_work_are_refused(tmp_path, capsys):
    recipe = RECIPES[0]
    assert cli.main(["launch", "--recipe", str(recipe), "--nnodes", "2"]) == 1
    assert "needs --rdzv-endpoint" in capsys.readouterr().err
    assert cli.main(["launch", "--recipe", str(recipe), "--steps", "nosuchstep", "--print-only"]) == 2
    assert "has no step 'nosuchstep'" in capsys.readouterr().err
    assert cli.main(["launch", "--recipe", str(recipe), "--smoke-data", str(tmp_path)]) == 1
    assert "holds no demo data: make it with `cifd-clip make-demo-data" in capsys.readouterr().err


def test_a_repeated_var_adds_to_the_earlier_ones(tmp_path):
    from cifd_clip.commands import launch as launch_cmd, plan as plan_cmd
    from cifd_clip.config import parse

    argv = ["--recipe", "r.yaml", "--var", "student=RN50", "train_data=/d/{a,b}.tar", "--var", "workers=3"]
    expected = {"student": "RN50", "train_data": "/d/{a,b}.tar", "workers": "3"}
    for command in (launch_cmd, plan_cmd):
        assert launch_cmd.var_items(parse(command.Config, argv).var) == expected
    # and it reaches the steps: the printed cifd step reads the student and the workers of both --var
    assert cli.main(["launch", "--recipe", str(VITS16), "--print-only", "--out", str(tmp_path),
                     "--var", "student=RN50", "--var", "workers=3", "--steps", "cifd"]) == 0
    step = yaml.safe_load((tmp_path / "launch" / "cifd.yaml").read_text())
    assert (step["model"], step["workers"]) == ("RN50", 3)


# --- srun, one task per GPU and no torchrun: ranks from SLURM's variables (engine/distributed.py) ---

def slurm_env(rank: int, tasks: int, port: int | None = None, **extra) -> dict:
    """A task's environment as srun sets it (no torchrun variables); MASTER_ADDR only with a port."""
    env = {k: v for k, v in ENV.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR",
                                                       "MASTER_PORT") and not k.startswith("SLURM_")}
    env.update(SLURM_PROCID=str(rank), SLURM_NTASKS=str(tasks), SLURM_STEP_NUM_TASKS=str(tasks),
               SLURM_LOCALID=str(rank), SLURM_JOB_ID="7", **extra)
    if port:
        env.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    return env


JOIN = """
import json, torch, torch.distributed as dist
from cifd_clip.engine.distributed import cleanup, end_process, init_distributed
env = init_distributed("cpu")
total = torch.tensor([env.rank + 1.0])
dist.all_reduce(total)
print(json.dumps({"rank": env.rank, "local_rank": env.local_rank, "world_size": env.world_size,
                  "backend": env.backend, "group_size": dist.get_world_size(), "sum": total.item()}))
cleanup(env)
end_process(0)
"""


def test_two_srun_tasks_join_one_gloo_group_from_slurms_variables():
    port = free_port()
    tasks = [subprocess.Popen([sys.executable, "-c", JOIN], cwd=REPO, env=slurm_env(rank, 2, port),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [task.communicate(timeout=300) for task in tasks]
    assert [task.returncode for task in tasks] == [0, 0], outs
    seen = [json.loads(out.strip().splitlines()[-1]) for out, _ in outs]
    for rank, info in enumerate(seen):  # both ranks in one group of 2: the all-reduce summed 1 + 2
        assert info == {"rank": rank, "local_rank": rank, "world_size": 2, "backend": "gloo", "group_size": 2,
                        "sum": 3.0}


END = """
import atexit, sys, threading, time, torch, torch.distributed as dist
from pathlib import Path
from cifd_clip.engine.distributed import cleanup, end_process, init_distributed
out = Path(sys.argv[1])
env = init_distributed("cpu")
dist.all_reduce(torch.ones(1))
cleanup(env)
atexit.register(lambda: (out / f"atexit{env.rank}").write_text("ran"))
threading.Thread(target=lambda: (time.sleep(0.3), (out / f"thread{env.rank}").write_text("done"))).start()
sys.stdout.write(f"rank {env.rank} unflushed")  # a pipe is block-buffered: only an explicit flush shows this
end_process(3)
"""


def test_a_process_that_joined_a_group_ends_with_its_code_and_loses_nothing(tmp_path):
    """end_process skips the interpreter's shutdown after a process group (a gloo worker thread asking for the
    GIL then aborts the process): what that shutdown would do must still happen."""
    port = free_port()
    buffered = {"PYTHONUNBUFFERED": ""}  # as a user's shell has it (CI sets it)
    tasks = [subprocess.Popen([sys.executable, "-c", END, str(tmp_path)], cwd=REPO,
                              env=dict(slurm_env(rank, 2, port), **buffered),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for rank in (0, 1)]
    outs = [task.communicate(timeout=300) for task in tasks]
    assert [task.returncode for task in tasks] == [3, 3], outs
    for rank, (out, _) in enumerate(outs):
        assert f"rank {rank} unflushed" in out
        assert (tmp_path / f"atexit{rank}").read_text() == "ran"
        assert (tmp_path / f"thread{rank}").read_text() == "done"


def test_an_srun_task_without_master_addr_stops_with_one_sentence(monkeypatch, capsys):
    from cifd_clip.engine.distributed import init_distributed
    from cifd_clip.errors import UserError

    for key, value in slurm_env(1, 2).items():
        monkeypatch.setenv(key, value)
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
        monkeypatch.delenv(key, raising=False)
    with pytest.raises(UserError, match=r"task 1 of 2 .* export MASTER_ADDR=\$\(scontrol show hostnames"):
        init_distributed("cpu")
    # launch --launcher srun stops before any step runs
    assert cli.main(["launch", "--recipe", str(VITS16), "--launcher", "srun", "--print-only"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "MASTER_ADDR, which is not set: export MASTER_ADDR" in err, err


@pytest.mark.parametrize("slurm", [{"SLURM_PROCID": "0", "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1"},
                                   {"SLURM_PROCID": "0"}, {"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4"},
                                   {"SLURM_JOB_ID": "7", "SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_LOCALID": "0"},
                                   {"SLURM_PROCID": "1", "SLURM_NTASKS": "2", "SLURM_STEP_NUM_TASKS": "2", "RANK": "0",
                                    "WORLD_SIZE": "1"}],
                         ids=["one-task-step", "no-task-count", "salloc-shell", "batch-script", "torchrun-vars-first"])
def test_a_single_slurm_task_runs_alone(monkeypatch, slurm):
    """A one-task job, an salloc shell (no SLURM_PROCID there), the batch script of a several-task job (SLURM_PROCID=0
    and the job's SLURM_NTASKS, but no srun step), and a process the runner starts as one process inside a task of a
    larger step (RANK=0 WORLD_SIZE=1): world size 1, no process group, no MASTER_ADDR needed."""
    from cifd_clip.engine.distributed import init_distributed

    for key in [*os.environ]:
        if key.startswith("SLURM_") or key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR"):
            monkeypatch.delenv(key)
    for key, value in slurm.items():
        monkeypatch.setenv(key, value)
    env = init_distributed("cpu")
    assert (env.rank, env.world_size, env.backend) == (0, 1, None)


def test_launch_with_the_srun_launcher_prints_one_plain_line_per_step(tmp_path, capsys, monkeypatch):
    from cifd_clip.launch.recipe import load_recipe
    from cifd_clip.launch.runner import Topology, step_env

    for key in [*os.environ]:
        if key.startswith("SLURM_"):
            monkeypatch.delenv(key)
    recipe = VITS16
    assert cli.main(["launch", "--recipe", str(recipe), "--print-only", "--out", str(tmp_path / "run"),
                     "--launcher", "srun"]) == 0
    out = capsys.readouterr().out
    assert "launcher srun: task 0 of 1" in out
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == len(load_recipe(recipe).steps)
    for line in lines:  # every step, the training ones too, is `cifd-clip STAGE --config FILE`: no torchrun
        command = shlex.split(line.split(": ", 1)[1])
        assert command[0] == "cifd-clip" and command[2] == "--config" and len(command) == 4, line
        resolve(stage_config(command[1]), {}, command[3])
    # under srun every task runs the step as its rank; a single-process step (on rank 0) is told it is alone
    steps = {s.processes: s for s in load_recipe(recipe).steps}
    srun = Topology(launcher="srun", rank=0, world_size=8)
    assert step_env(steps["all"], srun) is None
    assert {k: step_env(steps["one"], srun)[k] for k in ("RANK", "WORLD_SIZE")} == {"RANK": "0", "WORLD_SIZE": "1"}
    # the srun launcher takes its layout from srun, not from torchrun's options
    assert cli.main(["launch", "--recipe", str(recipe), "--launcher", "srun", "--nproc-per-node", "4"]) == 2
    assert "--launcher srun takes the layout from srun's tasks" in capsys.readouterr().err


@pytest.fixture(scope="module")
def smoke_runs(demo_data_dir, tmp_path_factory):
    """vitl14-vits16's smoke variant, every step, as slurm.sbatch runs it on 2 nodes: recipes/launch/node.sh on
    each "node" (here both on localhost, 1 process each, so each training step is 2 gloo ranks that meet
    through the c10d rendezvous); bench and export run on node 0 while node 1 waits for them."""
    root = tmp_path_factory.mktemp("recipes")
    out = root / "vitl14-vits16"
    env = dict(ENV, NNODES="2", GPUS_PER_NODE="1", RDZV_ENDPOINT=f"localhost:{free_port()}",
               CIFD_CLIP=f"{sys.executable} -m cifd_clip")
    argv = ["bash", str(REPO / "recipes/launch/node.sh"), str(REPO / "recipes/clip/vitl14-vits16.yaml"),
            "--smoke-data", str(demo_data_dir), "--out", str(out)]
    nodes = [subprocess.Popen(argv, cwd=REPO, env=dict(env, SLURM_NODEID=str(rank)), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for rank in (0, 1)]
    logs = [node.communicate(timeout=1200)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    return {"root": root, "out": out, "logs": logs, "data": demo_data_dir}


VITL14 = pytest.mark.xdist_group("vitl14")  # these share the first recipe's teacher cache: one worker


@pytest.mark.recipes
@VITL14
def test_smoke_recipe_runs_every_step_on_two_nodes_and_a_rerun_skips_them(smoke_runs):
    out, (node0, node1) = smoke_runs["out"], smoke_runs["logs"]
    steps = ["embed", "rdm", "cifd", "nokd", "kd", "clipkd", "tinyclip", "bench", "export"]
    assert [p.stem for p in sorted((out / "launch").glob("*.done"), key=os.path.getmtime)] == steps
    assert "--nnodes 2 --node-rank 1 --rdzv-backend c10d" in node1
    assert "-m -- cifd_clip distill --config" in node0
    for step in ("bench", "export"):  # node 1 waits for node 0, or finds it done when node 0 was the quicker
        assert f"step {step}: runs on node 0; waiting for" in node1 or f"] {step}: done earlier" in node1, node1
        assert f"] {step}: done earlier" not in node0
    assert "rank 1: embedded" in node0 + node1
    # the students really trained on 2 ranks, and the benchmark holds all five of them
    summary = json.loads((out / "runs" / "cifd" / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["steps"] == 2
    results = (out / "bench" / "results.md").read_text()
    for run in ("cifd", "nokd", "kd", "clipkd", "tinyclip"):
        assert f"/runs/{run}/checkpoints/epoch_latest.pt" in results
    assert (out / "export" / "cifd" / "open_clip_config.json").is_file()
    # the shared teacher folder sits beside the run, where the other ViT-L-14 recipes find it
    assert (smoke_runs["root"] / "vitl14-openai" / "cache" / "cache.json").is_file()
    again = launch("--recipe", REPO / "recipes/clip/vitl14-vits16.yaml", "--smoke-data", smoke_runs["data"],
                   "--out", out)
    assert again.returncode == 0
    assert again.stdout.count("done earlier") == len(steps)


@pytest.mark.recipes
@VITL14
@pytest.mark.parametrize("name", ["vitl14-rn50", "vitl14-vitb16"])
def test_the_other_vitl14_recipes_reuse_the_teacher_cache_and_run_end_to_end(smoke_runs, name):
    """vitl14-rn50 on one node with 2 processes (torchrun --standalone), vitl14-vitb16 as one process (its
    smoke variant has vitl14-vits16's tiny models); their embed and rdm steps skip: the first recipe made the
    teacher's cache and RDMs in the shared folder."""
    processes = {"vitl14-rn50": 2, "vitl14-vitb16": 1}[name]
    out = smoke_runs["root"] / name
    result = launch("--recipe", REPO / f"recipes/clip/{name}.yaml", "--smoke-data", smoke_runs["data"],
                    "--out", out, "--nproc-per-node", processes)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "cache.json exists, skipped" in result.stdout and "rdm.pt exists, skipped" in result.stdout
    if processes == 2:
        assert "torchrun --nproc-per-node 2 --standalone -m -- cifd_clip distill" in result.stdout
    config = yaml.safe_load((out / "runs" / "cifd" / "config.yaml").read_text())
    assert config["model"] == {"vitl14-rn50": "tiny-rn-student", "vitl14-vitb16": "tiny-vit-student"}[name]
    assert json.loads((out / "runs" / "cifd" / "summary.json").read_text())["world_size"] == processes
    assert (out / "bench" / "results.md").is_file() and (out / "export" / "cifd" / "open_clip_config.json").is_file()


@pytest.mark.recipes
@pytest.mark.xdist_group("ablation")
def test_the_rdm_ablation_recipe_runs_end_to_end_in_one_process(demo_data_dir, tmp_path):
    out = tmp_path / "vitb16-rdm-ablation"
    result = launch("--recipe", REPO / "recipes/clip/vitb16-rdm-ablation.yaml", "--smoke-data", demo_data_dir,
                    "--out", out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    for k in (1, 3, 5):
        family = json.loads((out / f"rdm{k}" / "rdm_eval.json").read_text())["rdms"]
        assert len([rdm for rdm in family if rdm["modality"] == "image"]) == k
    results = (out / "bench" / "results.md").read_text()
    for k in (0, 1, 3, 5):
        assert f"/runs/cifd-{k}rdm/checkpoints/epoch_latest.pt" in results


@pytest.mark.recipes
@pytest.mark.xdist_group("classification")
@pytest.mark.parametrize("name", ["cifar100-wrn40_2-wrn40_1", "imagenet-r34-r18"])
def test_the_classification_recipes_run_end_to_end(tmp_path_factory, name):
    data = tmp_path_factory.getbasetemp() / "cls-demo"
    if not data.is_dir():
        assert cli.main(["cls-make-demo-data", "--out", str(data), "--train-samples", "200",
                         "--test-samples", "60"]) == 0
    out = tmp_path_factory.mktemp(name)
    result = launch("--recipe", REPO / f"recipes/classification/{name}.yaml", "--smoke-data", data, "--out", out)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    steps = [s["name"] for s in yaml.safe_load((REPO / f"recipes/classification/{name}.yaml").read_text())["steps"]]
    assert sorted(p.stem for p in (out / "launch").glob("*.done")) == sorted(steps)
    assert json.loads((out / "runs" / "cifd" / "summary.json").read_text())["steps"] == 2


SRUN = """#!/usr/bin/env bash
# srun's stand-in on one machine: the command once per task (SLURM_NTASKS of them) with the task's SLURM_PROCID
# and SLURM_LOCALID, its output in $SRUN_LOGS/taskN.log; it fails when a task fails
while [[ $1 == -* ]]; do shift; done
pids=()
for ((i = 0; i < SLURM_NTASKS; i++)); do
    SLURM_PROCID=$i SLURM_LOCALID=$i SLURM_STEP_NUM_TASKS=$SLURM_NTASKS "$@" > "$SRUN_LOGS/task$i.log" 2>&1 &
    pids+=($!)
done
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=1; done
exit $rc
"""
SRUN_RECIPE = """base: VITS16
steps:   # the teacher's embeddings, one student (2 ranks each), and the single-process export on rank 0
  - {name: embed, stage: embed, options: {teacher: "${teacher}", train_data: "${train_data}", out: "${cache}"}}
  - name: kd
    stage: distill
    options: {model: "${student}", loss: distill_clip, cache: "${cache}", train_data: "${train_data}",
              train_num_samples: "${samples_per_epoch}", logs: "${runs}", name: kd}
  - {name: export, stage: export, options: {checkpoint: "${runs}/kd/checkpoints/epoch_latest.pt", out: "${out}/kd"}}
"""


@pytest.mark.recipes
@pytest.mark.xdist_group("srun")
def test_the_srun_sbatch_script_runs_a_recipe_as_two_tasks_without_torchrun(demo_data_dir, tmp_path):
    """recipes/launch/slurm-srun.sbatch as a 2-task job on localhost (srun and scontrol played by stand-ins):
    each task runs `cifd-clip launch --launcher srun`, embed and the student are 2 gloo ranks that meet at the
    MASTER_ADDR:MASTER_PORT the script exports, from SLURM's variables alone; export runs on rank 0 while rank 1
    waits for it."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, text in (("srun", SRUN), ("scontrol", "#!/usr/bin/env bash\necho localhost\n")):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    recipe = write_recipe(tmp_path, SRUN_RECIPE.replace("VITS16", str(VITS16)))
    out = tmp_path / "run"
    env = {k: v for k, v in slurm_env(0, 2).items() if k not in ("SLURM_PROCID", "SLURM_LOCALID")}
    env.update(PATH=f"{tools}{os.pathsep}{env['PATH']}", SLURM_JOB_NODELIST="localhost", SRUN_LOGS=str(tmp_path),
               MASTER_PORT=str(free_port()), CIFD_CLIP=f"{sys.executable} -m cifd_clip")
    job = subprocess.run(["bash", str(REPO / "recipes/launch/slurm-srun.sbatch"), str(recipe), "--smoke-data",
                          str(demo_data_dir), "--out", str(out)], cwd=REPO, env=env, capture_output=True, text=True,
                         timeout=1200)
    task0, task1 = ((tmp_path / f"task{rank}.log").read_text() for rank in (0, 1))
    assert job.returncode == 0, job.stderr[-2000:] + task0[-3000:] + task1[-3000:]
    assert sorted(p.stem for p in (out / "launch").glob("*.done")) == ["embed", "export", "kd"]
    assert "launcher srun: task 0 of 2" in task0 and "launcher srun: task 1 of 2" in task1
    assert "cifd-clip distill --config" in task1 and "torchrun" not in task0 + task1
    assert "rank 1: embedded" in task0 + task1
    assert "step kd: finishes on rank 0; waiting for" in task1
    # rank 1 waits for rank 0's export, or finds it done when rank 0 finished it within rank 1's polling interval
    assert "step export: runs on rank 0" in task1 or "] export: done earlier" in task1, task1
    assert "] export: done earlier" not in task0
    assert json.loads((out / "runs" / "kd" / "summary.json").read_text())["world_size"] == 2
    assert (out / "kd" / "open_clip_config.json").is_file()


@pytest.mark.parametrize("script, variable", [("slurm.sbatch", "RDZV_ENDPOINT"), ("slurm-srun.sbatch", "MASTER_PORT")])
def test_two_slurm_jobs_on_one_first_host_meet_at_ports_of_their_own(tmp_path, script, variable):
    tools = tmp_path / "bin"
    tools.mkdir()
    for name, text in (("srun", f"#!/usr/bin/env bash\necho ${variable}\n"),
                       ("scontrol", "#!/usr/bin/env bash\necho node0\n")):
        (tools / name).write_text(text)
        (tools / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k not in ("MASTER_PORT", "MASTER_ADDR", "RDZV_ENDPOINT")}
    env.update(PATH=f"{tools}{os.pathsep}{env['PATH']}", SLURM_JOB_NODELIST="node0")

    def port(job_id: int) -> str:
        job = subprocess.run(["bash", str(REPO / "recipes" / "launch" / script), "recipe.yaml"], cwd=REPO,
                             env={**env, "SLURM_JOB_ID": str(job_id)}, capture_output=True, text=True, check=True)
        return job.stdout.strip().rsplit(":", 1)[-1]

    assert port(4321) == "14321" and port(4322) == "14322"


@pytest.mark.parametrize("launcher", ["torchrun", "srun"])
def test_a_node_waits_for_node_0s_single_process_step_and_stops_when_it_fails(tmp_path, launcher, capsys):
    """torchrun: node 1 waits for node 0; srun: global rank 1 waits for rank 0 (both of one step's markers)."""
    import threading
    import time

    from cifd_clip.errors import UserError
    from cifd_clip.launch.recipe import load_recipe
    from cifd_clip.launch.runner import Topology, run_recipe

    recipe = load_recipe(write_recipe(tmp_path, f"vars: {{out: {tmp_path / 'out'}}}\nsteps:\n"
                                                "  - {name: export, stage: export, options: {checkpoint: c.pt, out: e}}\n"))
    node1 = (Topology(nproc_per_node=1, nnodes=2, node_rank=1, rdzv_endpoint="localhost:1").validate()
             if launcher == "torchrun" else Topology(launcher="srun", rank=1, world_size=2))
    leader = {"torchrun": "node 0", "srun": "rank 0"}[launcher]
    launch_dir = tmp_path / "out" / "launch"
    launch_dir.mkdir(parents=True)
    stale = launch_dir / "export.failed"
    stale.write_text("{}")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))  # an earlier attempt's failure: not this one's

    def node0_finishes(suffix):
        time.sleep(0.3)
        (launch_dir / f"export{suffix}").write_text("{}")

    threading.Thread(target=node0_finishes, args=(".done",)).start()
    assert run_recipe(recipe, node1, poll_s=0.05) == 0
    assert f"step export: runs on {leader}; waiting for {launch_dir / 'export.done'}" in capsys.readouterr().out
    (launch_dir / "export.done").unlink()
    threading.Thread(target=node0_finishes, args=(".failed",)).start()
    with pytest.raises(UserError, match=f"step export failed on {leader}"):
        run_recipe(recipe, node1, poll_s=0.05)
