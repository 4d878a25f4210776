// The app's logic that needs no Android: plain Java 8, no dependencies, so the same sources build
// into the app and run on a desktop JVM (tests/android_demo/ compiles and runs them with javac).
plugins {
    `java-library`
}

tasks.withType<JavaCompile>().configureEach {
    options.release.set(8)
    options.compilerArgs.addAll(listOf("-Xlint:all,-options", "-Werror"))
}

// The tests are a plain main (TestMain, no test framework), so `java` alone runs them too.
val desktopTest by tasks.registering(JavaExec::class) {
    description = "Runs the core's tests."
    group = "verification"
    classpath = sourceSets["test"].runtimeClasspath
    mainClass.set("org.qwenedge.demo.core.TestMain")
}

tasks.test {
    enabled = false // no JUnit here; `test` still runs desktopTest, its dependency
    dependsOn(desktopTest)
}

tasks.check {
    dependsOn(desktopTest)
}
