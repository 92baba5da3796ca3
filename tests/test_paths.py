import importlib
import logging

from mass_nn import paths


def test_import_never_fails_without_environment(monkeypatch):
    for name in paths.ROOT_NAMES:
        monkeypatch.delenv(name, raising=False)
    reloaded = importlib.reload(paths)
    resolved = reloaded.MassPaths.resolve()
    assert (resolved.raw, resolved.preprocessed, resolved.results) == tuple(
        reloaded.default_base() / name for name in reloaded.ROOT_NAMES)


def test_flag_beats_environment_beats_default(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("MASS_raw", str(tmp_path / "from_env"))
    monkeypatch.delenv("MASS_results", raising=False)
    monkeypatch.setattr(paths, "_announced_defaults", set())
    resolved = paths.MassPaths.resolve(preprocessed=tmp_path / "from_flag")
    assert resolved.raw == tmp_path / "from_env"
    assert resolved.preprocessed == tmp_path / "from_flag"
    with caplog.at_level(logging.WARNING):
        default = paths.resolve_root("MASS_results")
        paths.resolve_root("MASS_results")
    assert default == paths.default_base() / "MASS_results"
    announcements = [r for r in caplog.records if "MASS_results is not set" in r.getMessage()]
    assert len(announcements) == 1, "the default folder is announced exactly once"
