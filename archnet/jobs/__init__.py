"""The jobs the command line and the Python API run: ``convert`` (teacher -> verified Arch-Net
run folder). Verify, report and the demo move here as the pipeline becomes one."""
