;; Core module that spins forever in `_start`. Imports nothing.
;; Used to test fuel / epoch interruption and timeouts.
;; (`memory` is exported only so picky WASI hosts accept it as a command.)
(module
  (memory (export "memory") 1)
  (func (export "_start")
    (loop $spin
      (br $spin))))
