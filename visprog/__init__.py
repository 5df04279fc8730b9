"""visprog: visual programming with vision modules, an interpreter and traces."""
from .api import RunResult, VisProg
from .errors import (CheckError, Diagnostic, EvalError, ImageError, ParseError, ProgramError,
                     StepError, VisProgError)
from .parser import parse
from .program import Program
from .registry import Param, Registry, Tool, tool
from .trace import StepRecord, Trace
from .values import Objects, Region, load_image

__all__ = ["VisProg", "RunResult", "parse", "Program", "tool", "Tool", "Param", "Registry",
           "Trace", "StepRecord", "Objects", "Region", "load_image", "VisProgError",
           "ProgramError", "ParseError", "CheckError", "StepError", "EvalError", "ImageError",
           "Diagnostic"]
__version__ = "0.1.0"
