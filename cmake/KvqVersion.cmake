# The git revision, baked into every tool's --version and into the files kvq writes.
execute_process(COMMAND git rev-parse --short=12 HEAD
                WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}
                OUTPUT_VARIABLE KVQ_GIT_REVISION OUTPUT_STRIP_TRAILING_WHITESPACE
                ERROR_QUIET RESULT_VARIABLE _kvq_git_rc)
if(NOT _kvq_git_rc EQUAL 0 OR KVQ_GIT_REVISION STREQUAL "")
  set(KVQ_GIT_REVISION "unknown")
endif()
execute_process(COMMAND git status --porcelain --untracked-files=no
                WORKING_DIRECTORY ${CMAKE_CURRENT_SOURCE_DIR}
                OUTPUT_VARIABLE _kvq_dirty ERROR_QUIET)
if(NOT _kvq_dirty STREQUAL "")
  string(APPEND KVQ_GIT_REVISION "-dirty")
endif()
