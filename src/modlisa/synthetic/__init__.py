"""Deterministic synthetic ReasonSeg-format dataset: coloured shapes and queries with exactly one answer.

Each image shows 2-5 non-overlapping flat shapes (circle, oval, square, rectangle, triangle, star,
hexagon) in a few well-separated colours on a light, lightly textured background. Each annotation asks
for exactly one of them, either with a short phrase ("the small red circle", ``is_sentence`` false) or a
reasoning sentence (``is_sentence`` true) that needs colour, shape, size, position or relations ("Which
shape would roll if pushed?", "Find the largest shape to the left of the blue square."). Every query is a
``QuerySpec`` whose meaning ``resolve`` computes from the scene; a query is kept only when ``resolve``
returns exactly the target, with safety margins so that no object is a borderline case.

Modules, one job each: ``scene`` (shapes and their layout), ``options`` (``SceneOptions``),
``properties`` (the properties sentences ask about), ``queries`` (query meaning and choice), ``phrasing``
(query wordings and explanations, as template tables), ``render`` (pixels and masks), ``dataset``
(examples and files), ``refer_format`` (the same scenes in the refer layout of refCOCO & co.,
``make-data --format refcoco``), ``semseg_format`` (ADE20K, COCO-Stuff, PASCAL-Part, PACO-LVIS files,
``make-data --format ade20k``), ``vqa_format`` (LLaVA-Instruct conversations, ``--format llava_instruct``) and ``command`` (the ``modlisa make-data`` command line, not imported here).
"""

from modlisa.synthetic.dataset import (
    MIN_IMAGE_SIZE,
    SPLITS,
    Example,
    annotation_dict,
    generate_example,
    generate_scene_examples,
    make_dataset,
    write_example,
)
from modlisa.synthetic.options import SceneOptions, option_arguments
from modlisa.synthetic.phrasing import explain, noun_phrases, phrasings
from modlisa.synthetic.properties import PROPERTIES, Property
from modlisa.synthetic.queries import (
    KEYS,
    LONG_PROPOSERS,
    QUERY_TYPES,
    SHORT_PROPOSERS,
    Attrs,
    QuerySpec,
    attrs_of,
    choose_query,
    matching,
    relation_value,
    resolve,
    selects_by,
    unique_description,
)
from modlisa.synthetic.refer_format import REFER_SPLITS, make_refer_dataset
from modlisa.synthetic.render import rasterise, render
from modlisa.synthetic.scene import COLOURS, KINDS, SIZES, Scene, SceneObject, make_scene, unit_polygon
from modlisa.synthetic.semseg_format import SEMSEG_FORMATS, make_semseg_dataset
from modlisa.synthetic.vqa_format import make_llava_instruct

__all__ = [
    "COLOURS",
    "KEYS",
    "KINDS",
    "LONG_PROPOSERS",
    "MIN_IMAGE_SIZE",
    "PROPERTIES",
    "QUERY_TYPES",
    "REFER_SPLITS",
    "SEMSEG_FORMATS",
    "SHORT_PROPOSERS",
    "SIZES",
    "SPLITS",
    "Attrs",
    "Example",
    "Property",
    "QuerySpec",
    "Scene",
    "SceneObject",
    "SceneOptions",
    "annotation_dict",
    "attrs_of",
    "choose_query",
    "explain",
    "generate_example",
    "generate_scene_examples",
    "make_dataset",
    "make_llava_instruct",
    "make_refer_dataset",
    "make_scene",
    "make_semseg_dataset",
    "matching",
    "noun_phrases",
    "option_arguments",
    "phrasings",
    "rasterise",
    "relation_value",
    "render",
    "resolve",
    "selects_by",
    "unique_description",
    "unit_polygon",
    "write_example",
]
