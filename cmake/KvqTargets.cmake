# kvq_add_library(NAME SOURCES...): a static library, or an INTERFACE target while the
# folder has no sources yet, so that the dependency graph is the same either way.
function(kvq_add_library name)
  if(ARGN)
    add_library(${name} STATIC ${ARGN})
    target_include_directories(${name} PUBLIC ${KVQ_INCLUDE_ROOT})
  else()
    add_library(${name} INTERFACE)
    target_include_directories(${name} INTERFACE ${KVQ_INCLUDE_ROOT})
  endif()
endfunction()

# kvq_link(NAME LIBS...): PRIVATE links for a static library, INTERFACE for an empty one.
function(kvq_link name)
  get_target_property(type ${name} TYPE)
  if(type STREQUAL "INTERFACE_LIBRARY")
    target_link_libraries(${name} INTERFACE ${ARGN})
  else()
    target_link_libraries(${name} PRIVATE ${ARGN})
  endif()
endfunction()
