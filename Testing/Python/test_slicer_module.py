"""Static checks of the Slicer module's files (the .ui, the parameter class, CMake).

The module itself runs in ``Testing/Slicer`` on the Slicer-like runtime (``make test-slicer``).
"""

import ast
import os
import py_compile
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

from conftest import REPO

from DiffusionAnomalyLib.resources import resource_path

MODULE = REPO / "DiffusionAnomaly" / "DiffusionAnomaly.py"


def _parameter_annotations() -> dict[str, str]:
    """Field name -> annotation source of the @parameterNodeWrapper class: its own members, and the run
    settings it derives from ``panel.run_setting_parameters()`` (written as that function builds them)."""
    from DiffusionAnomalyLib.settings import field_type
    from DiffusionAnomalyLib.slicer_module.panel import panel_settings

    text = MODULE.read_text()
    for node in ast.parse(text).body:
        if isinstance(node, ast.ClassDef) and any(
            getattr(d, "id", None) == "parameterNodeWrapper" for d in node.decorator_list
        ):
            own = {s.target.id: ast.get_source_segment(text, s.annotation) for s in node.body
                   if isinstance(s, ast.AnnAssign)}
            assert "run_setting_parameters()" in ast.get_source_segment(text, node.bases[0])
            derived = {}
            for name, opt in panel_settings():
                kind, values = opt.panel_limit()
                derived[opt.panel] = (f"Annotated[str, Choice({list(values)})]" if kind == "choice" else
                                      f"Annotated[{field_type(name)[0].__name__}, WithinRange{tuple(values)}]")
            assert "synthesis_panel.parameters()" in ast.get_source_segment(text, node.bases[1])
            synthesis = _synthesis_annotations()
            assert not set(own) & set(derived) and not (set(own) | set(derived)) & set(synthesis)
            return {**own, **derived, **synthesis}
    raise AssertionError("no @parameterNodeWrapper class in the module")


def _synthesis_annotations() -> dict[str, str]:
    """The "Synthesize lesion" members (``synthesis_panel.parameters()``'s ``annotations``), as written there."""
    path = REPO / "DiffusionAnomalyLib" / "slicer_module" / "synthesis_panel.py"
    text = path.read_text()
    fn = next(n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef) and n.name == "parameters")
    table = next(n.value for n in ast.walk(fn) if isinstance(n, ast.Assign) and n.targets[0].id == "annotations")
    return {k.value: ast.get_source_segment(text, v) for k, v in zip(table.keys, table.values, strict=True)}


def _parameter_fields() -> set[str]:
    return set(_parameter_annotations())


def _ui_bindings() -> dict[str, str]:
    """SlicerParameterName -> the class of the widget that carries it."""
    root = ET.parse(resource_path("UI", "DiffusionAnomaly.ui")).getroot()
    out = {}
    for w in root.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                out[prop.find("string").text] = w.get("class")
    return out


#: Which widget classes the parameterNodeWrapper can bind to each kind of field.
WIDGETS_FOR = {"node": {"qMRMLNodeComboBox"}, "choice": {"QComboBox"}, "float": {"ctkSliderWidget", "QDoubleSpinBox"},
               "int": {"QSpinBox", "ctkSliderWidget"}, "str": {"QLineEdit", "QComboBox"}, "bool": {"QCheckBox"}}


def _kind(annotation: str) -> str:
    if "vtkMRML" in annotation:
        return "node"
    if "Choice(" in annotation:
        return "choice"
    for k in ("float", "int", "str", "bool"):
        if annotation == k or annotation.startswith(f"Annotated[{k}"):
            return k
    raise AssertionError(f"unexpected parameter annotation {annotation}")


def test_module_file_is_thin():
    assert len(MODULE.read_text().splitlines()) <= 300, "move logic into DiffusionAnomalyLib.slicer_module.panel"


def test_module_file_compiles_and_has_the_four_classes(tmp_path):
    py_compile.compile(str(MODULE), cfile=str(tmp_path / "m.pyc"), doraise=True)
    classes = {n.name for n in ast.parse(MODULE.read_text()).body if isinstance(n, ast.ClassDef)}
    assert {"DiffusionAnomaly", "DiffusionAnomalyWidget", "DiffusionAnomalyLogic", "DiffusionAnomalyTest"} <= classes
    assert "import imp\n" not in MODULE.read_text()


def test_ui_is_valid_designer_xml_and_parameter_names_match_the_parameter_class():
    ui = resource_path("UI", "DiffusionAnomaly.ui")
    root = ET.parse(ui).getroot()
    assert root.tag == "ui" and root.find("widget") is not None
    names = set()
    for prop in root.iter("property"):
        if prop.get("name") == "SlicerParameterName":
            names.add(prop.find("string").text)
    assert names, "the .ui binds no widget to the parameter node"
    fields = _parameter_fields()
    assert names <= fields, f"SlicerParameterName without a parameter field: {names - fields}"
    widgets = {w.get("name") for w in root.iter("widget")}
    assert {"inputVolumeSelector", "organComboBox", "applyButton"} <= widgets


def test_every_setting_has_a_widget_of_a_fitting_kind():
    bindings, annotations = _ui_bindings(), _parameter_annotations()
    # bundlePath is chosen through the bundle list (a path behind a label), lesionSegmentId through the segment list
    # (a segment ID behind its name): both set by code
    assert set(annotations) - set(bindings) == {"bundlePath", "lesionSegmentId"}
    for name, widget_class in bindings.items():
        assert widget_class in WIDGETS_FOR[_kind(annotations[name])], (name, widget_class, annotations[name])


def test_every_widget_the_module_uses_exists_in_the_ui():
    root = ET.parse(resource_path("UI", "DiffusionAnomaly.ui")).getroot()
    widgets = {w.get("name") for w in root.iter("widget")}
    panel_code = "".join((REPO / "DiffusionAnomalyLib" / "slicer_module" / name).read_text()
                         for name in ("panel.py", "synthesis_panel.py"))
    used = set(re.findall(r"self\.ui\.(\w+)", MODULE.read_text())) | set(re.findall(r"\bui\.(\w+)", panel_code))
    assert used, "the module uses no widgets?"
    assert used <= widgets, f"used by the module but not in the .ui: {used - widgets}"
    # each qMRMLNodeComboBox gets the scene (else it stays empty in Slicer)
    connected = {c.find("receiver").text for c in root.iter("connection")
                 if c.find("slot").text == "setMRMLScene(vtkMRMLScene*)"}
    combos = {w.get("name") for w in root.iter("widget") if w.get("class") == "qMRMLNodeComboBox"}
    assert combos == connected


def test_cmake_registers_the_module_tests_and_ships_the_library():
    module_cmake = (REPO / "DiffusionAnomaly" / "CMakeLists.txt").read_text()
    assert "WITH_GENERIC_TESTS" in module_cmake and "slicer_add_python_unittest" in module_cmake
    top = (REPO / "CMakeLists.txt").read_text()
    assert "add_subdirectory(DiffusionAnomaly)" in top and "DiffusionAnomalyLib/*.py" in top
    # the Extensions Manager installs SlicerPyTorch with it; the description names the minimum Slicer
    assert re.search(r"set\(EXTENSION_DEPENDS PyTorch\)", top)
    assert "Slicer 5.10 or later" in re.search(r'EXTENSION_DESCRIPTION "([^"]*)"', top).group(1)
    assert (REPO / "DiffusionAnomaly" / "Resources" / "Icons" / "DiffusionAnomaly.png").is_file()


def test_library_imports_no_slicer_qt_ctk_or_vtk():
    code = (
        "import importlib, pkgutil, sys, DiffusionAnomalyLib as L\n"
        "for m in pkgutil.walk_packages(L.__path__, 'DiffusionAnomalyLib.'):\n"
        "    if not m.name.endswith('__main__'): importlib.import_module(m.name)\n"
        "bad = sorted(k for k in sys.modules if k.split('.')[0] in ('slicer', 'qt', 'ctk', 'vtk'))\n"
        "print(bad)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert out.stdout.strip() == "[]"


def test_source_tree_fallback_puts_the_repository_on_sys_path():
    # The module must find DiffusionAnomalyLib when loaded from a source checkout (no build).
    text = MODULE.read_text()
    assert 'find_spec("DiffusionAnomalyLib")' in text and "sys.path.insert(0, _REPO_ROOT)" in text
