"""manifest.json: the code's commit and state, the command without credentials."""

import subprocess

from simu_lightning.pipeline.manifest import command_line, git_state


def test_the_command_line_keeps_overrides_and_leaves_credentials_out():
    argv = ["/somewhere/run.py", "method=simu", "logger.wandb.api_key=abc123", "+hub_token=xyz", "attribution.t=0.1"]
    assert command_line(argv) == [
        "run.py",
        "method=simu",
        "logger.wandb.api_key=<redacted>",
        "+hub_token=<redacted>",
        "attribution.t=0.1",
    ]


def test_git_state_names_the_commit_and_sees_a_changed_tracked_file(tmp_path):
    def git(*args):
        return subprocess.run(
            ["git", "-C", str(tmp_path), *args], capture_output=True, text=True, check=True
        ).stdout.strip()

    assert git_state(tmp_path) == {"commit": None, "dirty": None}  # not a checkout
    git("init", "-q")
    (tmp_path / "a.txt").write_text("one\n")
    git("add", "a.txt")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "one")
    assert git_state(tmp_path) == {"commit": git("rev-parse", "HEAD"), "dirty": False}
    (tmp_path / "untracked.txt").write_text("not part of the code\n")
    assert git_state(tmp_path)["dirty"] is False
    (tmp_path / "a.txt").write_text("two\n")
    assert git_state(tmp_path)["dirty"] is True
