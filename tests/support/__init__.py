"""What the service-level tests share: the harness (service.py: real databases, a real `tinyforge serve`,
real workers) and the one fake engine (fake_engine.py, configured by fake_specs.FakeStage), which records
its run directory through engine/run_record.py like the real stages do."""
