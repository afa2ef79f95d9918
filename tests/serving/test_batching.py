"""catdog.serving.batching: TF Serving's batching semantics on a recorded session run."""

import concurrent.futures
import threading
import time
from pathlib import Path

import grpc
import numpy as np
import pytest

from catdog.serving.batching import Batcher, BatchingOptions
from catdog.serving.client import Client
from catdog.serving.config_files import BatchingParameters, parse_text_proto
from catdog.serving.server import start_server
from catdog.serving.status import ServingError

from conftest import expected_probabilities


def wait_for(condition, seconds: float = 30) -> None:
    """Polls `condition` until it holds; fails the test after `seconds`."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(0.01)


def run_queued(run, feeds_list, **options):
    """Runs each feeds dict as its own Batcher task: the first alone (its run is held until the
    others have queued behind it), the rest queued together. (results, errors, batcher)."""
    release, first_running = threading.Event(), threading.Event()

    def held(feeds, fetches):
        if not first_running.is_set():
            first_running.set()
            release.wait(30)
        return run(feeds, fetches)

    batcher = Batcher(held, BatchingOptions(**{"max_batch_size": 8,
                                               "batch_timeout_micros": 10**6,
                                               "num_batch_threads": 1, **options}))
    results, errors = {}, {}

    def task(i, feeds):
        try:
            results[i] = batcher.run(feeds, ["y"])[0]
        except ServingError as error:
            errors[i] = error

    threads = [threading.Thread(target=task, args=(i, f)) for i, f in enumerate(feeds_list)]
    threads[0].start()
    assert first_running.wait(30)
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: batcher.queued_tasks() == len(feeds_list) - 1)
    release.set()
    for thread in threads:
        thread.join(30)
    batcher.stop()
    return results, errors, batcher


def test_concurrent_tasks_are_merged_padded_and_split_back():
    sizes = []

    def run(feeds, fetches):
        sizes.append(len(feeds["x"]))
        return [feeds["x"] * 2]

    feeds = [{"x": np.full((1, 2), i, np.float32)} for i in range(6)]
    results, errors, _ = run_queued(run, feeds, allowed_batch_sizes=(4, 8))
    assert not errors
    assert sizes == [4, 8]  # one task padded to 4, then five tasks padded to 8
    assert all(results[i].tolist() == [[2 * i, 2 * i]] for i in range(6))


def test_a_task_larger_than_the_batch_is_refused():
    batcher = Batcher(lambda feeds, fetches: [feeds["x"]], BatchingOptions(max_batch_size=2))
    with pytest.raises(ServingError, match="larger than maximum input batch size 2"):
        batcher.run({"x": np.zeros((3, 1))}, ["y"])
    batcher.stop()


def test_shipped_batching_config_parses_as_tf_serving_parses_it(tmp_path):
    options = BatchingOptions.from_proto(parse_text_proto(
        Path(__file__).resolve().parents[2] / "serving" / "batching.config", BatchingParameters,
        "batching_parameters_file"))
    assert options == BatchingOptions(32, 2000, 100, 2, ())
    (tmp_path / "bad.config").write_text("max_batch_size: 3")
    with pytest.raises(Exception, match="Error parsing text-format "
                                        "tensorflow.serving.BatchingParameters"):
        parse_text_proto(tmp_path / "bad.config", BatchingParameters, "batching_parameters_file")


def test_batching_merges_concurrent_requests_and_keeps_answers(exported, tmp_path, jpegs):
    """--enable_batching with serving/batching.config: 8 concurrent clients get the answers an
    unbatched server gives."""
    batching = Path(__file__).resolve().parents[2] / "serving" / "batching.config"
    server = start_server("catdog", exported[2], port=0, rest_api_port=None,
                          enable_batching=True, batching_parameters_file=str(batching))
    try:
        url = f"grpc://127.0.0.1:{server.grpc_port}"
        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            batched = list(pool.map(lambda i: Client(url).predict([jpegs[i % len(jpegs)]])[0],
                                    range(16)))
        for i, prediction in enumerate(batched):
            alone = expected_probabilities(exported[0], [jpegs[i % len(jpegs)]])[0]
            np.testing.assert_allclose(prediction.probabilities, alone, atol=1e-5)
    finally:
        server.stop()


def test_one_bad_task_fails_alone_and_the_others_of_its_batch_get_their_answers():
    """BatchingSession fails every task of a batch whose merged run fails (batching_session.cc,
    ProcessBatch); catdog reruns such a batch task by task."""
    runs = []

    def run(feeds, fetches):
        runs.append(len(feeds["x"]))
        if (feeds["x"] < 0).any():
            raise ServingError(grpc.StatusCode.INVALID_ARGUMENT, "negative input")
        return [feeds["x"] * 2]

    feeds = [{"x": np.full((1, 2), v, np.float32)} for v in (0, 1, -1, 2, -2, 3)]
    results, errors, batcher = run_queued(run, feeds)
    assert sorted(errors) == [2, 4] and all("negative input" in e.message for e in errors.values())
    assert {i: r.tolist() for i, r in results.items()} == {
        0: [[0, 0]], 1: [[2, 2]], 3: [[4, 4]], 5: [[6, 6]]}
    assert runs == [1, 5, 1, 1, 1, 1, 1] and batcher.batches_split == 1


def test_tasks_of_other_shapes_or_dtypes_are_never_merged():
    sizes = []

    def run(feeds, fetches):
        sizes.append(feeds["x"].shape)
        return [feeds["x"]]

    feeds = [{"x": np.zeros((1, 2), np.float32)}, {"x": np.zeros((1, 3), np.float32)},
             {"x": np.zeros((1, 3), np.float64)}, {"x": np.zeros((2, 3), np.float32)}]
    results, errors, _ = run_queued(run, feeds)
    assert not errors
    for i, feed in enumerate(feeds):  # each got its own rows back, in its own dtype
        assert results[i].shape == feed["x"].shape and results[i].dtype == feed["x"].dtype
    # the float64 task and the [.., 2] task ran alone; the float32 [.., 3] ones may share a run
    assert sorted(sizes) in ([(1, 2), (1, 3), (1, 3), (2, 3)], [(1, 2), (1, 3), (3, 3)])


@pytest.mark.slow
def test_bad_images_in_batch_windows_fail_no_good_request(exported, jpegs):
    """--enable_batching with serving/batching.config: windows of 12 concurrent requests, 3 of
    them an undecodable or over-size image. Every good request is answered; each bad one gets
    its own INVALID_ARGUMENT; the metrics count both."""
    from conftest import png_bomb

    batching = Path(__file__).resolve().parents[2] / "serving" / "batching.config"
    server = start_server("catdog", exported[2], port=0, rest_api_port=None,
                          enable_batching=True, batching_parameters_file=str(batching))
    url = f"grpc://127.0.0.1:{server.grpc_port}"
    bad_images = [b"not an image", png_bomb(), b"\xff\xd8\xff truncated"]
    good_failures, bad_codes, good = [], [], 0
    try:
        with concurrent.futures.ThreadPoolExecutor(12) as pool:
            for _ in range(15):
                images = [jpegs[i % len(jpegs)].read_bytes() for i in range(9)] + bad_images
                futures = [(i >= 9, pool.submit(Client(url, retries=0).predict, [image]))
                           for i, image in enumerate(images)]
                for is_bad, future in futures:
                    try:
                        future.result()
                        good += not is_bad
                        assert not is_bad, "a bad image was answered"
                    except ServingError as error:
                        (bad_codes if is_bad else good_failures).append(error)
        page = server.metrics.page()
    finally:
        server.stop()
    assert not good_failures, good_failures[:3]
    assert good == 135 and len(bad_codes) == 45
    assert {e.code for e in bad_codes} == {grpc.StatusCode.INVALID_ARGUMENT}
    assert 'request_count{model_name="catdog",status="OK"} 135' in page
    assert 'request_count{model_name="catdog",status="INVALID_ARGUMENT"} 45' in page
