"""Teacher specs and the shared input checks."""
import pytest
import torch

from spear_fast.teachers import TeacherSpec, check_waves, load_teacher


def test_parse_string_and_dict():
    spec = TeacherSpec.parse("wavlm:/models/wavlm large?layer=21&dtype=fp32")
    assert spec == TeacherSpec("wavlm", "/models/wavlm large", 21, {"dtype": "fp32"})
    assert TeacherSpec.parse(str(spec)) == spec
    assert TeacherSpec.parse("whisper-demo") == TeacherSpec("whisper-demo")
    assert TeacherSpec.parse("crepe-demo?layer=conv6&hop=320") == TeacherSpec("crepe-demo", None, "conv6", {"hop": "320"})
    assert TeacherSpec.parse("dasheng:C:/x.pt").path == "C:/x.pt"
    as_dict = TeacherSpec.parse({"kind": "dasheng", "path": "/m/d.pt", "layer": 40, "dtype": "bf16"})
    assert as_dict == TeacherSpec("dasheng", "/m/d.pt", 40, {"dtype": "bf16"})


def test_identity_is_one_spelling_per_teacher(tmp_path, monkeypatch):
    """A token store records TeacherSpec.identity(): a relative path and reordered options name the
    same teacher; another layer or option does not."""
    monkeypatch.chdir(tmp_path)
    relative = TeacherSpec.parse("wavlm:models/w?dtype=fp32&layer=3&context=10")
    absolute = TeacherSpec.parse(f"wavlm:{tmp_path}/models/w?layer=3&context=10&dtype=fp32")
    assert relative.identity() == absolute.identity() == f"wavlm:{tmp_path}/models/w?layer=3&context=10&dtype=fp32"
    assert TeacherSpec.parse(f"wavlm:{tmp_path}/models/w?layer=4&context=10&dtype=fp32").identity() != absolute.identity()
    assert TeacherSpec.parse(f"wavlm:{tmp_path}/models/w?layer=3&context=20&dtype=fp32").identity() != absolute.identity()
    assert TeacherSpec.parse("whisper-demo").identity() == "whisper-demo"


@pytest.mark.parametrize("bad", ["wavelm:/x", "", {"path": "/x"}, 3, "hubert:/x?layer"])
def test_bad_specs(bad):
    with pytest.raises(ValueError):
        TeacherSpec.parse(bad)
        load_teacher(bad)


def test_check_waves(seed):
    gen = torch.Generator().manual_seed(seed)
    waves = torch.randn(2, 100, generator=gen)
    out, lengths = check_waves(waves, torch.tensor([100, 60]))
    assert lengths.dtype == torch.int64 and out[1, 60:].abs().sum() == 0 and torch.equal(out[0], waves[0])
    waves[1, 80] = float("nan")  # past the length: ignored
    check_waves(waves, torch.tensor([100, 60]))
    with pytest.raises(ValueError, match="NaN"):
        check_waves(waves, torch.tensor([100, 90]))
    with pytest.raises(ValueError, match=r"\(B, L\)"):
        check_waves(torch.randn(100), torch.tensor([100]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        check_waves(torch.randn(2, 100), torch.tensor([100]))
    with pytest.raises(ValueError, match=r"\[1, 100\]"):
        check_waves(torch.randn(2, 100), torch.tensor([100, 0]))
    with pytest.raises(ValueError, match="integers"):
        check_waves(torch.randn(2, 100), torch.tensor([100.0, 50.0]))
    with pytest.raises(ValueError, match="floating"):
        check_waves(torch.ones(2, 100, dtype=torch.int16), None)
