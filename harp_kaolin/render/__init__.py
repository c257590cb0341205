"""Rendering: camera, DIB-R rasterization front end, shading."""

from harp_kaolin.render.camera import Camera, face_inputs, project_mesh, project_to_ndc
from harp_kaolin.render.rasterize import RasterOutput, rasterize
from harp_kaolin.render.renderer import Renderer, RenderOutput

__all__ = ["Camera", "RasterOutput", "face_inputs", "project_mesh", "project_to_ndc", "rasterize"]
__all__ += ["RenderOutput", "Renderer"]
