"""A headless Slicer "application" on the ``slicer-core`` wheel: a real MRML scene with the module logics
XraySegSim needs, and offscreen slice / 3D views rendered to numpy arrays (see
/work/shared/notes/slicer-headless.md for what works without Qt).

Usage::

    app = HeadlessSlicer()            # sets slicer.mrmlScene = app.scene
    view = app.slice_view("Red")      # offscreen slice view bound to the scene's Red slice node
    rgb = view.capture("out.png")     # (height, width, 3) uint8
    app.close()

Slicer >= 5.10 leaves the slice image actor to the Qt widget (CTK's vtkLightBoxRendererManager, not in
slicer-core), so :class:`_SliceImageLayer` adds it, as trame-slicer does.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np

# One offscreen backend everywhere (Mesa's software EGL), so pictures do not depend on the machine.
os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import slicer  # noqa: E402
import vtk  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

SLICE_MANAGERS = ("vtkMRMLModelSliceDisplayableManager", "vtkMRMLSegmentationsDisplayableManager2D",
                  "vtkMRMLMarkupsDisplayableManager")
THREED_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                   "vtkMRMLModelDisplayableManager", "vtkMRMLThreeDReformatDisplayableManager",
                   "vtkMRMLSegmentationsDisplayableManager3D", "vtkMRMLMarkupsDisplayableManager",
                   "vtkMRMLTransformsDisplayableManager3D")


class HeadlessSlicer:
    """Scene + application logic + the module logics (Colors, Segmentations, Markups, Volumes, Transforms,
    Models), wired as Slicer's application does it."""

    def __init__(self) -> None:
        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)
        color_logic = self.app_logic.GetColorLogic()
        color_logic.SetMRMLScene(self.scene)
        color_logic.AddDefaultColorNodes()
        self.app_logic.SetModuleLogic("Colors", color_logic)  # the Volumes logic colours label maps with it
        self.logics = {"Colors": color_logic}
        for name, cls in [("Segmentations", slicer.vtkSlicerSegmentationsModuleLogic),
                          ("Markups", slicer.vtkSlicerMarkupsLogic),
                          ("Volumes", slicer.vtkSlicerVolumesLogic),
                          ("Transforms", slicer.vtkSlicerTransformLogic),
                          ("Models", slicer.vtkSlicerModelsLogic)]:
            logic = cls()
            logic.SetMRMLScene(self.scene)
            logic.SetMRMLApplicationLogic(self.app_logic)
            self.app_logic.SetModuleLogic(name, logic)
            self.logics[name] = logic
        slicer.vtkMRMLSliceNode.AddDefaultSliceOrientationPresets(self.scene, True)
        self.app_logic.SetSliceLogics(vtk.vtkCollection())
        self.app_logic.SetViewLogics(vtk.vtkCollection())
        for factory in (slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance(),
                        slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance()):
            factory.SetMRMLApplicationLogic(self.app_logic)
        self._previous_scene = getattr(slicer, "mrmlScene", None)
        slicer.mrmlScene = self.scene
        self.views: list[_OffscreenView] = []

    def slice_view(self, name: str = "Red", size: tuple[int, int] = (400, 400)) -> "SliceView":
        view = SliceView(self, name, size)
        self.views.append(view)
        return view

    def threed_view(self, name: str = "1", size: tuple[int, int] = (500, 400)) -> "ThreeDView":
        view = ThreeDView(self, name, size)
        self.views.append(view)
        return view

    def close(self) -> None:
        for view in self.views:
            view.close()
        self.views.clear()
        self.scene.Clear(True)
        slicer.mrmlScene = self._previous_scene


class _OffscreenView:
    def __init__(self, size: tuple[int, int]) -> None:
        self.renderer = vtk.vtkRenderer()
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(True)
        self.window.SetMultiSamples(0)
        self.window.SetSize(*size)
        self.window.AddRenderer(self.renderer)
        # Displayable managers (markups widgets) need an interactor, even if no event ever comes.
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        self.group = slicer.vtkMRMLDisplayableManagerGroup()
        self.group.SetRenderer(self.renderer)

    def _register(self, factory, managers) -> None:
        for manager in managers:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.group.Initialize(factory, self.renderer)

    def render(self) -> None:
        self.group.RequestRender()
        self.window.Render()

    def capture(self, path: str | Path | None = None) -> np.ndarray:
        """Render and return the picture as (height, width, 3) uint8, top row first; optionally save a PNG."""
        self.render()
        grabber = vtk.vtkWindowToImageFilter()
        grabber.SetInput(self.window)
        grabber.SetInputBufferTypeToRGB()
        grabber.ReadFrontBufferOff()
        grabber.Update()
        image = grabber.GetOutput()
        width, height, _ = image.GetDimensions()
        rgb = numpy_support.vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, 3)[::-1].copy()
        if path is not None:
            writer = vtk.vtkPNGWriter()
            writer.SetFileName(str(path))
            writer.SetInputConnection(grabber.GetOutputPort())
            writer.Write()
        return rgb

    def close(self) -> None:
        self.group.SetMRMLDisplayableNode(None)
        self.window.Finalize()


class _SliceImageLayer:
    """Shows the slice logic's blended image (background, foreground, label layers) as a 2D actor."""

    def __init__(self, renderer) -> None:
        self._renderer = renderer
        self.mapper = vtk.vtkImageMapper()
        self.mapper.SetColorWindow(255)
        self.mapper.SetColorLevel(127.5)
        self.actor = vtk.vtkActor2D()
        self.actor.SetMapper(self.mapper)
        self.actor.GetProperty().SetDisplayLocationToBackground()
        self.actor.SetVisibility(False)
        # First in the renderer, so the displayable managers' overlays (segment fill) blend over the image.
        renderer.AddViewProp(self.actor)

    def set_connection(self, connection) -> None:
        self.mapper.SetInputConnection(connection)
        self.actor.SetVisibility(bool(connection))


class SliceView(_OffscreenView):
    def __init__(self, app: HeadlessSlicer, name: str, size: tuple[int, int]) -> None:
        super().__init__(size)
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self.layer = _SliceImageLayer(self.renderer)
        self._register(slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance(), SLICE_MANAGERS)
        self.logic = slicer.vtkMRMLSliceLogic()
        self.logic.SetMRMLApplicationLogic(app.app_logic)
        app.app_logic.GetSliceLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(app.scene)
        self.node = self.logic.AddSliceNode(name)
        self.group.SetMRMLDisplayableNode(self.node)
        self.logic.ResizeSliceNode(*size)
        self.app = app

    @property
    def composite_node(self):
        return self.logic.GetSliceCompositeNode()

    def render(self) -> None:
        self.layer.set_connection(self.logic.GetImageDataConnection())
        super().render()

    def close(self) -> None:
        self.app.app_logic.GetSliceLogics().RemoveItem(self.logic)
        super().close()


class ThreeDView(_OffscreenView):
    def __init__(self, app: HeadlessSlicer, name: str, size: tuple[int, int]) -> None:
        super().__init__(size)
        self.renderer.SetUseDepthPeeling(True)
        self._register(slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance(), THREED_MANAGERS)
        self.logic = slicer.vtkMRMLViewLogic()
        self.logic.SetMRMLApplicationLogic(app.app_logic)
        app.app_logic.GetViewLogics().AddItem(self.logic)
        self.logic.SetMRMLScene(app.scene)
        self.node = self.logic.AddViewNode(name)
        self.group.SetMRMLDisplayableNode(self.node)
        self.app = app

    def look_from(self, direction: Sequence[float], view_up: Sequence[float] = (0, 0, 1)) -> None:
        """Aim the camera along ``-direction`` (RAS) at everything shown, zoomed to fit."""
        self.render()
        camera = self.renderer.GetActiveCamera()
        camera.SetFocalPoint(0, 0, 0)
        camera.SetPosition(*direction)
        camera.SetViewUp(*view_up)
        self.renderer.ResetCamera()
        self.renderer.ResetCameraClippingRange()

    def camera_node(self):
        manager = self.group.GetDisplayableManagerByClassName("vtkMRMLCameraDisplayableManager")
        return manager.GetCameraNode()

    def close(self) -> None:
        self.app.app_logic.GetViewLogics().RemoveItem(self.logic)
        super().close()
