"""notebooks/quickstart.ipynb runs top to bottom (on a tiny config) and shows videos inline."""
import os

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_the_quickstart_notebook_trains_samples_and_shows_the_videos(tmp_path):
  notebook = nbformat.read(os.path.join(ROOT, "notebooks", "quickstart.ipynb"), as_version=4)
  parameters = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
  parameters.source = (f'CONFIG = "tiny,text=hashed_words"\nWORKDIR = {str(tmp_path)!r}\n'
                       'PROMPTS = ["the digit 3 moves up"]')
  nbclient.NotebookClient(notebook, timeout=600, kernel_name="python3",
                          resources={"metadata": {"path": ROOT}}).execute()
  outputs = [o for c in notebook.cells if c.cell_type == "code" for o in c.get("outputs", [])]
  assert not [o for o in outputs if o.output_type == "error"]
  shown = [o for o in outputs if o.output_type == "display_data"]
  assert any("image/gif" in o.data for o in shown)
  assert any("image/png" in o.data for o in shown)
  text = "".join(o.get("text", "") for o in outputs if o.output_type == "stream")
  assert "step 6: loss" in text
  assert os.path.exists(tmp_path / "notebook_samples" / "0.mp4")
