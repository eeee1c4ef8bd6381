"""The disk cache under concurrent writers: two processes finishing one entry at once never fail."""

import multiprocessing as mp
import shutil

from simu_lightning.utils.files import atomic

ROUNDS = 1000


def writer(final, start, written, cleared, failures, rounds):
    for _ in range(rounds):
        start.wait()  # both released together, as ranks after an all-reduce
        try:
            with atomic(final, keep_existing=True) as tmp:
                tmp.mkdir()
                (tmp / "scores.txt").write_text("complete")
        except Exception as err:  # the bug: OSError(39, 'Directory not empty') from os.replace
            failures.put(repr(err))
        written.wait()  # the parent checks the entry, then clears it
        cleared.wait()


def test_two_processes_racing_on_one_entry_never_fail(tmp_path):
    ctx = mp.get_context("fork")
    final = tmp_path / "attribution" / "key"
    start, written, cleared, failures = ctx.Barrier(2), ctx.Barrier(3), ctx.Barrier(3), ctx.Queue()
    workers = [ctx.Process(target=writer, args=(final, start, written, cleared, failures, ROUNDS)) for _ in range(2)]
    for w in workers:
        w.start()
    complete = 0
    for _ in range(ROUNDS):
        written.wait()
        complete += (final / "scores.txt").exists() and (final / "scores.txt").read_text() == "complete"
        shutil.rmtree(final, ignore_errors=True)
        cleared.wait()
    for w in workers:
        w.join(timeout=60)
    errors = []
    while not failures.empty():
        errors.append(failures.get())
    assert errors == [] and complete == ROUNDS
    assert not [p for p in final.parent.iterdir() if ".tmp-" in p.name]  # no half-written entry left behind


def test_an_output_written_in_a_failing_block_leaves_the_previous_one(tmp_path):
    from simu_lightning.utils.files import atomic

    path = tmp_path / "results.json"
    path.write_text("complete")
    try:
        with atomic(path) as tmp:
            tmp.write_text("half")
            raise KeyboardInterrupt  # killed while writing
    except KeyboardInterrupt:
        pass
    assert path.read_text() == "complete" and list(tmp_path.iterdir()) == [path]
    folder = tmp_path / "unlearned_model"
    folder.mkdir()
    (folder / "model.safetensors").write_text("old")
    with atomic(folder) as tmp:
        tmp.mkdir()  # a path to fill: a file or, as here, a folder
        (tmp / "model.safetensors").write_text("new")
    assert (folder / "model.safetensors").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == [
        "results.json",
        "unlearned_model",
    ]
