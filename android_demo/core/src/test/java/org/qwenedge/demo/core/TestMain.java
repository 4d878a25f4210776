package org.qwenedge.demo.core;

import java.lang.reflect.InvocationTargetException;
import java.lang.reflect.Method;
import java.lang.reflect.Modifier;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.Comparator;
import java.util.List;

/**
 * Runs every test of the core: each {@code static void test*()} method of the classes below.
 * Prints one line per test, the failures with their messages, and exits 1 when any failed.
 * Arguments, if given, keep only the tests whose "Class.method" name contains one of them.
 */
public final class TestMain {
  private static final List<Class<?>> SUITES = Arrays.<Class<?>>asList(
      JsonTest.class, ManifestTest.class, BundleFilesTest.class, TokenDecoderTest.class, SelfCheckTest.class,
      ChatTest.class, SamplingAndStatsTest.class);

  private TestMain() {}

  public static void main(String[] args) {
    List<String> failures = new ArrayList<>();
    int run = 0;
    for (Class<?> suite : SUITES) {
      Method[] methods = suite.getDeclaredMethods();
      Arrays.sort(methods, Comparator.comparing(Method::getName));
      for (Method method : methods) {
        String name = suite.getSimpleName() + "." + method.getName();
        if (!isTest(method) || !selected(name, args)) continue;
        run++;
        try {
          method.setAccessible(true);
          method.invoke(null);
          System.out.println("ok     " + name);
        } catch (InvocationTargetException e) {
          Throwable cause = e.getCause();
          System.out.println("FAILED " + name);
          failures.add(name + ": " + cause + where(cause));
        } catch (IllegalAccessException e) {
          failures.add(name + ": cannot be called (" + e + ")");
        }
      }
    }
    System.out.println();
    for (String failure : failures) System.out.println("FAILED " + failure);
    System.out.println(run + " tests, " + failures.size() + " failed");
    if (run == 0) {
      System.out.println("no test matched " + Arrays.toString(args));
      System.exit(2);
    }
    System.exit(failures.isEmpty() ? 0 : 1);
  }

  private static boolean isTest(Method method) {
    return method.getName().startsWith("test") && Modifier.isStatic(method.getModifiers())
        && method.getParameterCount() == 0;
  }

  private static boolean selected(String name, String[] filters) {
    if (filters.length == 0) return true;
    for (String filter : filters) {
      if (name.contains(filter)) return true;
    }
    return false;
  }

  /** The test-source line that failed, to find it without a stack trace. */
  private static String where(Throwable thrown) {
    for (StackTraceElement frame : thrown.getStackTrace()) {
      if (frame.getClassName().endsWith("Test")) return " (" + frame.getFileName() + ":" + frame.getLineNumber() + ")";
    }
    return "";
  }
}
