"""`harp info`."""

from __future__ import annotations

import json

from harp_kaolin.cli import main


def test_info_json(capsys, anny_hand):
    assert main(["info", "--hand", "anny", "--subdivide", "1", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["vertices"] == 1609 and facts["faces"] == 3196
    assert facts["subdivided_vertices"] == 1609 + facts["edges"] == 6413
    assert facts["subdivided_faces"] == 4 * 3196
    assert facts["joints"] == 21 and facts["uv_vertices"] == 1817
