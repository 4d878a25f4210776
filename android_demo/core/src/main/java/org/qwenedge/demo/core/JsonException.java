package org.qwenedge.demo.core;

/** Malformed JSON: what was expected and where (line, column). */
public final class JsonException extends RuntimeException {
  private static final long serialVersionUID = 1L;

  public JsonException(String message) {
    super(message);
  }
}
