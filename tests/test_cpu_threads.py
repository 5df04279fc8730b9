"""`[models] cpu_threads`: torch's CPU thread count is pinned while a manager's models run.

Why it exists: GroundingDINO's CPU kernels split their sums by thread, so the same tiny model
gave scores a float32 ulp apart on 2 threads (a test process) and on 1 (a Ray replica, where
Ray sets OMP_NUM_THREADS from the replica's CPUs). The tiny preset pins 1 thread, so its
results are the same in every process; these tests fail if the pin stops being applied.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from visprog.errors import ConfigError
from visprog.models.manager import ModelManager, check_cpu_threads
from visprog.models.memory import BudgetedModelManager, make_manager

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")


@pytest.fixture
def restore_threads():
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("value, expected", [(None, None), ("auto", None), (1, 1), (3, 3)])
def test_cpu_threads_values(value, expected):
    assert check_cpu_threads(value) == expected


@pytest.mark.parametrize("bad", [0, -2, 1.5, "two", True, [1]])
def test_bad_cpu_threads_is_a_config_error(bad):
    with pytest.raises(ConfigError, match="cpu_threads"):
        make_manager({"cpu_threads": bad})


@pytest.mark.parametrize("config, cls", [({"cpu_threads": 1}, ModelManager),
                                         ({"cpu_threads": 1, "memory_budget": "1GB"},
                                          BudgetedModelManager)])
def test_the_manager_pins_threads_when_a_model_is_asked_for(config, cls, restore_threads):
    mm = make_manager({"device": "cpu", **config})
    assert type(mm) is cls
    torch.set_num_threads(2)
    mm.get("dummy", "dummy-checkpoint", lambda path, device, dtype: torch.nn.Linear(2, 2))
    assert torch.get_num_threads() == 1
    torch.set_num_threads(2)           # someone else changed it: the next call pins it again
    mm.get("dummy", "dummy-checkpoint", lambda path, device, dtype: None)
    assert torch.get_num_threads() == 1


def test_no_setting_leaves_torch_alone(restore_threads):
    torch.set_num_threads(2)
    make_manager({"device": "cpu"}).get("dummy", "x", lambda path, device, dtype: 1)
    assert torch.get_num_threads() == 2


def test_tiny_results_do_not_depend_on_the_callers_thread_count(restore_threads):
    """Loc's tiny GroundingDINO on this picture gives other last bits on 2 threads than on 1;
    with the tiny preset's pin, the caller's thread count no longer matters."""
    from visprog.api import VisProg
    from visprog.values import codec

    rng = np.random.default_rng(1)
    image = Image.fromarray(rng.integers(0, 255, (120, 200, 3), dtype=np.uint8))
    vp = VisProg(preset="tiny", cache=False, plugins=False)
    assert vp.models.cpu_threads == 1
    digests = []
    for n in (2, 1):
        torch.set_num_threads(n)
        digests.append(codec.digest(vp.execute("O=Loc(image=IMAGE, object='dog')",
                                               image=image).value))
    assert digests[0] == digests[1]
