"""Candidate scores beyond BN re-estimation (issue 24's fidelity study): the short distillation
and the distillation-loss score, on tiny data."""

import copy

import pytest
import torch

from prunelab.errors import PrunelabError
from prunelab.searches.scoring import kd_score, short_train


def _student_teacher(tiny_data):
    from prunelab.models import build

    torch.manual_seed(0)
    teacher = build("resnet20", in_channels=1, num_classes=tiny_data.num_classes,
                    width=0.25).eval()
    torch.manual_seed(1)
    student = build("resnet20", in_channels=1, num_classes=tiny_data.num_classes,
                    width=0.25).eval()
    return student, teacher


def test_kd_score_is_highest_for_the_teacher_itself(tiny_data):
    student, teacher = _student_teacher(tiny_data)
    val = list(tiny_data.batches("val", 20))
    assert kd_score(copy.deepcopy(teacher), teacher, val) == pytest.approx(0.0, abs=1e-5)
    assert kd_score(student, teacher, val) < -1e-4
    with pytest.raises(PrunelabError, match="no images"):
        kd_score(student, teacher, [])


def test_short_distillation_moves_the_student_toward_the_teacher(tiny_data):
    student, teacher = _student_teacher(tiny_data)
    batches = list(tiny_data.batches("train", 64, limit=256))
    before = kd_score(student, teacher, batches)
    short_train(student, tiny_data, 20, seed=0, lr=0.05, teacher=teacher, kd_weight=1.0)
    assert not student.training and not teacher.training
    assert kd_score(student, teacher, batches) > before


@pytest.mark.parametrize("max_bytes", [256 * 2**20, 1])   # batches kept, or none kept
def test_a_kept_distillation_trains_alike_and_runs_the_teacher_once_per_batch(tiny_data,
                                                                              max_bytes):
    from prunelab.searches.scoring import Distillation

    student, teacher = _student_teacher(tiny_data)
    calls = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(len(i[0])))
    plain = copy.deepcopy(student)
    short_train(plain, tiny_data, 5, seed=3, teacher=teacher)
    plain_calls, calls[:] = len(calls), []
    kd = Distillation(tiny_data, teacher, seed=3, max_bytes=max_bytes)
    first, second = copy.deepcopy(student), copy.deepcopy(student)
    short_train(first, tiny_data, 5, seed=3, distillation=kd)
    short_train(second, tiny_data, 5, seed=3, distillation=kd)
    for net in (first, second):   # the same batches, the same logits: the same weights
        for a, b in zip(plain.state_dict().values(), net.state_dict().values()):
            assert torch.equal(a, b)
    n = min(5, len(tiny_data.batches("train", 128)))   # the tiny set has fewer batches
    assert plain_calls == n >= 2
    assert len(calls) == (n if max_bytes > 1 else 2 * n)
