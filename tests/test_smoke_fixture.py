def test_tiny_run_writes_a_complete_run_directory(tiny_run):
    for name in ("config.json", "model.keras", "history.csv", "splits.csv", "metrics.json",
                 "predictions.csv", "environment.json"):
        assert (tiny_run.root / name).is_file(), name
