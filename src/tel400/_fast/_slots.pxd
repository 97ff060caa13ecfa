# cython: language_level=3
"""Writing and reading the slots of ``__slots__`` classes directly: what the compiled twins
(``_plans``: the validator's plan objects; ``_compile``: the compiler's description objects)
build their objects with, a blank instance and each slot written through its member
descriptor's offset, as the class's ``__init__`` would write it, without the lookups.

Offsets are read once, at the twin's import, from the classes themselves; a field that is
not a writable object slot fails that import (the twin then falls back to its reference).
"""

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF

cdef extern from "Python.h":
    object PyType_GenericAlloc(type t, Py_ssize_t nitems)
    void PyObject_GC_UnTrack(object o)
    ctypedef struct PyMemberDef:
        const char* name
        int type
        Py_ssize_t offset
        int flags
    ctypedef struct PyMemberDescrObject:
        PyMemberDef* d_member

cdef extern from "structmember.h":
    int T_OBJECT_EX
    int READONLY


cdef inline int slot_offsets(str module, type cls, names, Py_ssize_t* into) except -1:
    """Where each of ``names`` lives in an instance of ``cls``: into[i], in order."""
    cdef PyMemberDescrObject* descr
    for i, name in enumerate(names):
        member = cls.__dict__.get(name)
        if type(member).__name__ != "member_descriptor":
            raise ImportError(f"{module}: {cls.__name__}.{name} is not a slot")
        descr = <PyMemberDescrObject*>member
        if descr.d_member.type != T_OBJECT_EX or descr.d_member.flags & READONLY:
            raise ImportError(f"{module}: {cls.__name__}.{name} is not a writable object slot")
        into[i] = descr.d_member.offset
    return 0


cdef inline void put_slot(object o, Py_ssize_t offset, object value):
    """Write a slot of a blank instance (it is empty: nothing to release)."""
    Py_INCREF(value)
    (<PyObject**>(<char*><PyObject*>o + offset))[0] = <PyObject*>value


cdef inline object get_slot(object o, Py_ssize_t offset):
    """A slot of an object whose ``__init__`` sets every field (never empty)."""
    return <object>(<PyObject**>(<char*><PyObject*>o + offset))[0]
