"""Floor 2: the integer Program (ops, tensors, file format)."""
from simulator.ir.builder import ProgramBuilder
from simulator.ir.ops import MAC_OPS, OP_INFO, OpKind
from simulator.ir.program import Node, Program, TensorInfo, load_program, make_node, save_program

__all__ = ["MAC_OPS", "OP_INFO", "Node", "OpKind", "Program", "ProgramBuilder", "TensorInfo",
           "load_program", "make_node", "save_program"]
