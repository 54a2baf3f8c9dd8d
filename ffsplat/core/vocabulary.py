"""Names shared by every layer (data, teachers, evaluation): the evaluation classes.

Vocabulary (one name per concept):

* **clip**: a run of keyframes of one scene, the unit a shard sample holds
  (:class:`ffsplat.data.clip.Clip`, ``ClipExamples``). The CLIP *model* is never called "clip" alone:
  it is the CLIP text encoder (``ffsplat.teachers.clip_text``, ``ClipTextEncoder``,
  ``teachers.clip_path`` = the local CLIP text model directory).
* **evaluation classes**: :data:`EVAL_CLASSES`, ids ``1..8``; 0 is ignored.
"""

from __future__ import annotations

EVAL_CLASSES = ("wall", "floor", "ceiling", "chair", "table", "sofa", "bed", "other")
"""The 8 evaluation class names; class index ``i + 1`` is ``EVAL_CLASSES[i]`` and 0 is ignored."""
